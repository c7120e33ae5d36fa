"""Dataset files: finding images, decoding them robustly, caption sidecars and keeping paths inside the dataset."""
