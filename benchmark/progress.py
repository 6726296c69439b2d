"""A progress display on stderr: which run and phase is going, how many runs are left, an estimated end."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints one line per step; on a terminal the running step's line is rewritten in place."""

    def __init__(self, total_runs: int, stream: TextIO | None = None) -> None:
        self.total = total_runs
        self.done = 0
        self.stream = stream or sys.stderr
        self.run_seconds = 0.0  # total time of the finished runs
        self.run_started = time.monotonic()
        self._tty = self.stream.isatty()
        self._open_line = False

    def eta(self) -> str:
        """The time the runs left will take, at the mean pace of the finished ones."""
        if self.done == 0:
            return "?"
        left = self.run_seconds / self.done * (self.total - self.done)
        return f"{left / 60:.1f} min"

    def run_starting(self) -> None:
        self.run_started = time.monotonic()

    def step(self, text: str) -> None:
        """Show the current step (replaced by the next one on a terminal)."""
        line = f"[{self.done + 1}/{self.total}, {self.eta()} left] {text}"
        if self._tty:
            self.stream.write(f"\r\033[K{line}")
            self._open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line that stays (results, warnings)."""
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def run_finished(self, summary: str) -> None:
        seconds = time.monotonic() - self.run_started
        self.run_seconds += seconds
        self.done += 1
        self.note(f"[{self.done}/{self.total}] {summary} ({seconds:.1f} s)")
