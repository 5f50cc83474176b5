"""User-facing errors.

A `LiserError` is a problem with the user's input (a file, a key, a corpus
layout), not a bug: the CLI prints its message on one line and exits with
status 2, without a traceback. The message names the file or key at fault.
"""


class LiserError(Exception):
    """Bad input: the message names the file or key and what is wrong."""
