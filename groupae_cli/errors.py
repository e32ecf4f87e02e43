"""The bad-input policy, defined once.

Two kinds of trouble:

* a **usage error** (`UsageError`): the command cannot start — a file that does not exist, an
  unknown format, a bad option value. One line on stderr, exit code 2, nothing written.
* a **record failure** (`Failure`): one record of an input cannot be used. By default it is skipped
  and reported — recorded in the command's output where it has one (the HDF5 `failed` table) and
  summarised on stderr. With `--strict` any failure makes the command exit 1 (after the good
  records are processed, so the output stays complete and honest).

Readers never raise on bad records: they yield a `Failure` in the record's place.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2


class GroupaeError(Exception):
    """An error with a one-line, user-facing message and an exit code."""

    exit_code = 1


class UsageError(GroupaeError):
    """The command cannot start: bad path, unknown format, bad option value."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Failure:
    """A record that could not be used.

    `index` is the record's 0-based position in its file, or None when the whole file failed
    (empty, unreadable).
    """

    source: str
    index: int | None
    reason: str
    name: str = ""

    def __str__(self) -> str:
        where = self.source if self.index is None else f"{self.source}: record {self.index}"
        if self.name:
            where += f" ({self.name})"
        return f"{where}: {self.reason}"


class FailureReport:
    """Collects failures during a command and summarises them on stderr at the end."""

    def __init__(self, strict: bool = False, shown: int = 10, noun: str = "record"):
        self.strict = strict
        self.shown = shown
        self.noun = noun  # what a failure skips: "record", or "pair" for align
        self.failures: list[Failure] = []

    def add(self, failure: Failure) -> None:
        self.failures.append(failure)

    def __len__(self) -> int:
        return len(self.failures)

    def summarise(self, stream=None) -> None:
        stream = stream or sys.stderr
        if not self.failures:
            return
        n = len(self.failures)
        print(f"groupae: {n} {self.noun}{'s' if n != 1 else ''} skipped:", file=stream)
        for failure in self.failures[: self.shown]:
            print(f"  {failure}", file=stream)
        if n > self.shown:
            print(f"  ... and {n - self.shown} more", file=stream)

    def exit_code(self) -> int:
        return EXIT_FAILURES if (self.strict and self.failures) else EXIT_OK
