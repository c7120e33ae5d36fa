"""The caption review page: report, thumbnails, edits and the local edit server."""
