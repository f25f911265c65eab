"""One exception type for every user-facing error, so the CLI can print it without a traceback."""


class AlignError(Exception):
    """A problem with the user's input (recipe, data file, model reference) explained in one message."""
