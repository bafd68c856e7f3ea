"""The root of every error raised on purpose: its message is meant for the user as it is."""

from __future__ import annotations


class UsherError(Exception):
    """An expected failure (bad input, busy database): one sentence naming the thing and the fix.

    Scripts and the command line print these without a traceback; any other exception is a bug.
    """
