"""Errors that end a run: each message tells the user what to do next."""


class FatalError(Exception):
    """The run cannot start or go on (no images, no model, bad option); the message says what to do."""


class OptionError(FatalError, ValueError):
    """An option or setting has a value that cannot work; raised where it is validated, shown as is."""
