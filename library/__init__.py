"""captionkit shared library: image discovery and loading, preprocessing, sidecars, models and the batched pipeline."""

__version__ = "0.1.0"
