"""Exceptions TILscope raises for bad input, with messages meant for the user.

Every message says what was received, what is allowed and how to fix it. The CLI
prints ``str(err)`` on one line and the pages show it in ``st.error``.
"""


class TILscopeError(Exception):
    """Base class of every error whose message is meant for the user."""


class ImageReadError(TILscopeError):
    """The file is not a readable image, or its layout is not supported."""


class InputError(TILscopeError):
    """An argument (mpp, scenario options, a table) is out of its allowed range."""


class UnknownScenarioError(TILscopeError, KeyError):
    """A scenario key that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(TILscopeError):
    """A weights file is missing, corrupt or does not match its registered SHA-256."""
