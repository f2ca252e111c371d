"""Helpers for the child processes that run llama.cpp and its tools."""

from __future__ import annotations

import signal


def signal_name(number: int) -> str:
    """'SIGSEGV' for 11; a child killed by a signal reports it as a negative return code."""
    try:
        return signal.Signals(abs(number)).name
    except ValueError:
        return f"signal {abs(number)}"
