"""captionkit command-line scripts (run them by path: python finetune/<script>.py --help)."""
