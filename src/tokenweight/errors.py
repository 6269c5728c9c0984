"""Errors that the command line prints as one line (``tokenweight: error: …``), without a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad flag, row, file, split, setting): printed as one line, exit status 2."""
