"""Dataset tools: buckets, sd-scripts dataset configs, metadata merges, reports, resizing, caption edits."""
