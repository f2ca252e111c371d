"""User-facing errors: one line that names the problem and the fix, never a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class TuneGGUFError(Exception):
    """A mistake the user can fix (bad path, bad config, missing dependency).

    The CLI prints ``str(error)`` on one line and exits with status 2; library callers can
    catch it like any exception.
    """


def closest(name: str, candidates: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest candidate, or '' when none is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
