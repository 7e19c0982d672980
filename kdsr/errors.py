"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdsrError(Exception):
    """A problem the user can fix (bad config, path, image, checkpoint or plugin).

    The message must name the thing and the fix; the CLI shows it without a traceback.
    """


class NonFiniteLoss(KdsrError):
    """Training produced a NaN/inf loss, gradient or weight; the last (finite) checkpoint is kept."""


class PluginError(KdsrError):
    """A plugin's hook or factory raised during a run; the message names the plugin and the hook."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
