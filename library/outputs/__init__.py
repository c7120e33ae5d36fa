"""Where results go: caption sidecars, metadata files, result tables, failure lists."""
