"""The run loop: the job interface, batches over decode workers, writing results, stage timing and process setup."""
