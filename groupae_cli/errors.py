"""The bad-input policy, defined once.

Two kinds of trouble:

* a **usage error** (`UsageError`): the command cannot start — a file that does not exist, an
  unknown format, a bad option value. One line on stderr, exit code 2, nothing written.
* a **record failure** (`Failure`): one record of an input cannot be used. By default it is skipped
  and reported — recorded in the command's output where it has one (the HDF5 `failed` table) and
  summarised on stderr. With `--strict` any failure makes the command exit 1 (after the good
  records are processed, so the output stays complete and honest).
* an **output error** (`OutputError`, a usage error): an output cannot be written — a missing
  directory, no permission, a full disk, a directory where a file should go. One line naming the
  file, exit code 2; outputs are written under a temporary name and renamed when complete, so
  nothing is left under the final name and the temporary file is removed.

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


class OutputError(UsageError):
    """An output cannot be written (missing directory, permission, full disk, a directory).

    `fatal`: the failure left a C library (HDF5) in a state where running the process's
    finalisers can crash it; the command line then ends the process at once (os._exit).
    """

    fatal = False


def os_error_text(exc: OSError) -> str:
    """The reason of an OSError in a few words: the system's words for its errno ("No space left on
    device"; h5py's carry HDF5's whole error stack as strerror), or for an `errno = N` in its
    message, else its message's first line."""
    import os
    import re

    code = exc.errno or (int(m.group(1)) if (m := re.search(r"errno = (\d+)", str(exc))) else None)
    text = os.strerror(code) if code else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if code and exc.strerror and exc.strerror.startswith(text):  # the system's words, with details
        text = exc.strerror
    return text if len(text) <= 160 else text[:157] + "..."


def output_error(path, exc: OSError) -> OutputError:
    """The one-line OutputError for an OSError met while writing `path`."""
    return OutputError(f"{path}: cannot write: {os_error_text(exc)}")


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
