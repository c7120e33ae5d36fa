"""The `captionkit` command: runs a script of finetune/ by path, so installing captionkit adds no top-level `library`."""
