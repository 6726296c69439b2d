"""Looking at processes from tests."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether a process `pid` exists (a zombie counts: it has not been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
