"""Errors that end a run: each message tells the user what to do next."""


class FatalError(Exception):
    """The run cannot start or go on (no images, no model, bad option); the message says what to do."""
