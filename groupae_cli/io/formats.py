"""Which reader a path needs, and opening it: plain or gzip'ed files, or stdin ("-")."""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from groupae_cli.errors import UsageError, output_error

FORMATS = ("xyz", "sdf", "ply", "pdb", "mol2")
EXTENSIONS = {
    ".xyz": "xyz",
    ".extxyz": "xyz",
    ".sdf": "sdf",
    ".sd": "sdf",
    ".mol": "sdf",
    ".mdl": "sdf",
    ".ply": "ply",
    ".pdb": "pdb",
    ".ent": "pdb",
    ".mol2": "mol2",
}
GZIP_MAGIC = b"\x1f\x8b"
#: Largest record a reader holds in memory (bytes); a larger one is skipped as a failed record, so
#: memory is bounded by this, not by the file's longest line or record.
MAX_RECORD_BYTES = 64 << 20
#: Longest line kept (bytes); the rest of a longer line is read past and dropped (a text format's
#: lines are short: a longer one is binary data or a broken file).
MAX_LINE_BYTES = 1 << 20
STDIN = "-"
_SNIFF_BYTES = 4096
#: Record names a PDB file starts with.
_PDB_RECORDS = ("HEADER", "TITLE ", "COMPND", "REMARK", "CRYST1", "MODEL ", "ATOM  ", "HETATM")


_NAMES = {"xyz": "XYZ", "sdf": "SDF/MOL", "ply": "PLY", "pdb": "PDB", "mol2": "MOL2"}


def _known() -> str:
    """e.g. `XYZ (.xyz, .extxyz), SDF/MOL (.sdf, .sd, .mol, .mdl), PLY (.ply), each also gzip'ed (.gz)`."""
    kinds = [f"{_NAMES[f]} ({', '.join(e for e, g in EXTENSIONS.items() if g == f)})" for f in FORMATS]
    return ", ".join(kinds) + ", each also gzip'ed (.gz)"


def _sniff_file(path: Path) -> str | None:
    """The format a file's first bytes look like, or None (also when it cannot be read)."""
    try:
        stream = open_binary(str(path))
    except OSError:
        return None
    try:
        return sniff(peek_head(stream))
    except (OSError, EOFError, zlib.error):
        return None
    finally:
        stream.close()


def format_from_name(path: str) -> str | None:
    """The format an extension names (".gz" looked through), or None."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return EXTENSIONS.get(suffixes[-1]) if suffixes else None


def sniff(head: bytes) -> str | None:
    """Guess a format from the first bytes of a (decompressed) file."""
    if head.startswith(b"ply"):
        return "ply"
    text = head.decode("utf-8", errors="replace")
    if "@<TRIPOS>" in text:
        return "mol2"
    if "V2000" in text or "V3000" in text or "M  END" in text or "$$$$" in text:
        return "sdf"
    for line in text.splitlines():
        if line.startswith(_PDB_RECORDS):
            return "pdb"
        if line.strip():
            return "xyz" if line.strip().isdigit() else None
    return None


def resolve(path: str, fmt: str | None = None) -> str:
    """Check that `path` can be read and return its format; raise UsageError otherwise.

    Called for every input before a command starts work, so a typo never costs a half-done run.
    For stdin without `fmt` the format is sniffed when reading starts and "auto" is returned.
    """
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise UsageError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if path == STDIN:
        return fmt or "auto"
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{path}: no such file")
    if p.is_dir():
        raise UsageError(f"{path}: is a directory, not a structure file")
    if fmt is None:
        fmt = format_from_name(path)
        if fmt is None:
            extension = "".join(p.suffixes) or "(none)"
            looks = _sniff_file(p)
            hint = (f"it looks like {_NAMES[looks]}: pass --format {looks}" if looks
                    else f"groupae reads {_known()}")
            raise UsageError(f"{path}: unknown file extension {extension!r}; {hint}")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"{path}: cannot open ({exc.strerror})") from None
    return fmt


def open_binary(path: str) -> BinaryIO:
    """A binary stream over the file's (decompressed) bytes; gzip is detected by its magic."""
    raw: BinaryIO
    if path == STDIN:
        raw = io.BufferedReader(sys.stdin.buffer, 1 << 16)  # type: ignore[arg-type]
    else:
        raw = open(path, "rb", buffering=1 << 16)  # noqa: SIM115 - the caller owns the stream
    if raw.peek(2)[:2] == GZIP_MAGIC:
        return io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), 1 << 16)  # type: ignore[arg-type]
    return raw


def bounded_lines(stream: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of a binary stream, each cut to at most `limit` bytes: a longer line's first
    `limit` bytes are yielded (without a newline) and the rest is read past in `limit`-sized
    pieces, so a file of zeros without a newline never sits in memory whole."""
    while line := stream.readline(limit):
        if len(line) == limit and not line.endswith(b"\n"):
            while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
                pass
        yield line


def too_large(size: int, limit: int = MAX_RECORD_BYTES) -> str:
    """The failure reason of a record skipped for its size."""
    return f"record larger than {limit >> 20} MiB (more than {size} bytes read); skipped to bound memory"


def bytes_read(stream: BinaryIO):
    """A function giving how many bytes of the file under `stream` (from `open_binary`) have been
    read: compressed bytes for gzip, so that progress compares with the file's size on disk."""
    inner = getattr(stream, "raw", None)
    if isinstance(inner, gzip.GzipFile):
        return inner.fileobj.tell
    return stream.tell


def peek_head(stream: BinaryIO) -> bytes:
    """Up to a few KB from the start of a buffered stream, without consuming them."""
    return stream.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]


@contextlib.contextmanager
def text_output(out: TextIO | str | Path):
    """A text stream to write to: `out` itself when it is one, else the file it names (closed after)."""
    if hasattr(out, "write"):
        yield out
    else:
        with open(out, "w") as stream:
            yield stream


def partial_path(path: str | Path) -> Path:
    """The hidden temporary name a file is written under before it is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def remove_stale_partials(path: str | Path) -> None:
    """Remove the temporary files of `path` left by processes that no longer run (killed while
    writing it): `.NAME.partial-PID` beside it, PID not a live process."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it runs, as another user
        return True
    return True


def check_output(path: str | Path, inputs=()) -> None:
    """UsageError, before any work, when `path` cannot be an output: a directory, in a directory that
    does not exist or cannot be written, or one of the `inputs` (it would be overwritten)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{path}: is a directory; name the file to write")
    parent = p.parent
    if not parent.is_dir():
        raise UsageError(f"{path}: cannot write: no such directory {str(parent)!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: cannot write: directory {str(parent)!r} is not writable")
    for source in inputs:
        if str(source) != STDIN and p.exists() and Path(source).exists() and os.path.samefile(p, source):
            raise UsageError(f"{path}: is also an input; write the output elsewhere")


@contextlib.contextmanager
def written_atomically(path: str | Path):
    """Yield a temporary path to write; on success it is renamed to `path`, on failure removed,
    so an interrupted write never leaves a file that looks finished. An OSError while writing
    (full disk, missing directory, `path` a directory) becomes one OutputError naming `path`."""
    tmp = partial_path(path)
    remove_stale_partials(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None and str(exc.filename) not in (str(tmp), str(path)):
            raise  # about another file (an input read while writing)
        raise output_error(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
