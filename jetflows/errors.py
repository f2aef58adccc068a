"""The error types of bad input: what the user can fix, told apart from a bug.

Every deliberate check on user input (a class name, a shape, a NaN, a config key, a file)
raises `UserError`, a `ValueError`, or `MissingFileError`, a `FileNotFoundError` (and a
`UserError`): library callers catch them as the built-in types, and the `jetflows` command
prints them as one line with exit status 2. Any other exception is a bug: the command says so,
with where its traceback went (exit status 1).

Example:
    >>> try:
    ...     raise MissingFileError("runs/x/t/flow.pt: no such file; train the run first")
    ... except FileNotFoundError as err:
    ...     isinstance(err, UserError)
    True
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; its message names the argument and the fix."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named, or a stage's output the user must produce first, is missing."""
