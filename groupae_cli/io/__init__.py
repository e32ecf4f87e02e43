"""Structure files in and out: readers (XYZ, SDF/MOL, PLY, PDB, MOL2), writers, the HDF5 output.

Every reader streams and yields, per record, either a `Structure` or a `Failure`; nothing stops at
a bad record.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from groupae_cli.errors import Failure, UsageError
from groupae_cli.io.formats import (
    STDIN,
    bytes_read,
    format_from_name,
    open_binary,
    peek_head,
    resolve,
    sniff,
    written_atomically,
)
from groupae_cli.io.records import POINT_TYPE, SKIPPED, Structure, check

__all__ = [
    "POINT_TYPE",
    "Failure",
    "Structure",
    "check",
    "read_inputs",
    "read_items",
    "read_structures",
    "resolve_inputs",
    "write_structures",
]


def _reader(fmt: str):
    if fmt == "xyz":
        from groupae_cli.io.xyz import read_xyz

        return read_xyz
    if fmt == "sdf":
        from groupae_cli.io.sdf import read_sdf

        return read_sdf
    if fmt in ("pdb", "mol2"):
        from groupae_cli.io import pdb_mol2

        return pdb_mol2.read_pdb if fmt == "pdb" else pdb_mol2.read_mol2
    from groupae_cli.io.ply import read_ply

    return read_ply


def read_structures(path: str | Path, fmt: str | None = None, on_bytes: Callable[[int], None] | None = None,
                    wanted: Callable[[int], bool] | None = None,
                    geometry_only: bool = False) -> Iterator[Structure | Failure]:
    """Stream the records of one file (or "-" for stdin) as Structures or Failures.

    Raises UsageError only for what stops a command before it starts (no such file, unknown
    format); everything found while reading becomes a Failure: an empty file, binary garbage,
    a broken record (and reading goes on), a stream that breaks off (reading stops there).
    `on_bytes`, if given, is called after each record with the bytes of the file (as stored, so
    compressed for .gz) read so far; not for stdin. With `wanted`, a record whose index it rejects
    is cut from the text but not parsed, and yielded as SKIPPED (so the indices that follow hold).
    With `geometry_only`, records hold what embedding reads (elements, positions, name, place) and
    not bonds, charges, features or SD properties, which cost about a quarter of an SDF record's
    reading; the same records fail.
    """
    source = str(path)
    fmt = resolve(source, fmt)
    stream = open_binary(source)
    position = None if source == STDIN or on_bytes is None else bytes_read(stream)
    seen = 0
    try:
        if not peek_head(stream):
            yield Failure(source, None, "empty file: no records")
            return
        if fmt == "auto":
            fmt = sniff(peek_head(stream))
            if fmt is None:
                yield Failure(source, None, "cannot tell the format of standard input; pass --format")
                return
        for item in _reader(fmt)(stream, source, wanted, geometry_only):
            seen += 1
            if position is not None:
                on_bytes(position())
            yield item
    except (OSError, EOFError, zlib.error) as exc:  # e.g. a .gz cut short or corrupt (zlib.error: a damaged deflate block)
        yield Failure(source, seen if seen else None, f"unreadable after {seen} records: {exc}")
        return
    finally:
        stream.close()
    if seen == 0:
        yield Failure(source, None, "no records found")


def resolve_inputs(paths: Iterable[str | Path], fmt: str | None = None) -> list[str]:
    """Check every input before any work starts; UsageError names the first bad one."""
    paths = [str(p) for p in paths]
    if not paths:
        raise UsageError("no input files")
    if paths.count(STDIN) > 1:
        raise UsageError("standard input ('-') can be read only once")
    for path in paths:
        resolve(path, fmt)
    return paths


def read_inputs(paths: Iterable[str | Path], fmt: str | None = None,
                on_bytes: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, Structure | Failure]]:
    """(file number, record or failure) over several inputs, in order.

    `on_bytes(file number, bytes read)` follows each file's progress (see `read_structures`).
    """
    for _, number, item in read_items(paths, fmt, on_bytes):
        yield number, item


def read_items(paths: Iterable[str | Path], fmt: str | None = None,
               on_bytes: Callable[[int, int], None] | None = None,
               select: Callable[[int], bool] | None = None,
               geometry_only: bool = False) -> Iterator[tuple[int, int, Structure | Failure]]:
    """(item number, file number, record or failure) over several inputs, in order.

    The item number counts every record and failure of every input, in order (a file that
    cannot be read at all counts as one). With `select`, only items whose number it accepts are
    yielded, and the others are cut from the text without being parsed: `select=lambda k: k % N
    == i` is shard i of N, and costs each shard only its own share of parsing. `geometry_only`: see
    `read_structures`.
    """
    base = 0
    for number, path in enumerate(resolve_inputs(paths, fmt)):
        track = None if on_bytes is None else (lambda n, number=number: on_bytes(number, n))
        wanted = None if select is None else (lambda index, base=base: select(base + index))
        offset = -1
        for offset, item in enumerate(read_structures(path, fmt, track, wanted, geometry_only)):
            if item is not SKIPPED and (select is None or select(base + offset)):
                yield base + offset, number, item
        base += offset + 1


def write_structures(structures: Iterable[Structure], path: str | Path, fmt: str | None = None) -> int:
    """Write structures to a file whose format comes from `fmt` or its extension ("-": stdout, XYZ).

    A file is written under a hidden temporary name and renamed when complete, so a failure
    half-way never leaves a file that looks finished. PLY holds one structure per file; XYZ and
    SDF hold many. Returns the number written.
    """
    import sys

    path = str(path)
    fmt = fmt or ("xyz" if path == STDIN else format_from_name(path))
    if fmt not in ("xyz", "sdf", "ply"):
        raise UsageError(f"{path}: cannot tell the output format from the extension; use .xyz, .sdf or .ply")
    if path == STDIN:
        return _write(structures, sys.stdout, fmt, path)
    with written_atomically(path) as tmp:
        return _write(structures, tmp, fmt, path)


def _write(structures: Iterable[Structure], out, fmt: str, name: str) -> int:
    if fmt == "xyz":
        from groupae_cli.io.xyz import write_xyz

        return write_xyz(structures, out)
    if fmt == "sdf":
        from groupae_cli.io.sdf import write_sdf

        return write_sdf(structures, out)
    from groupae_cli.io.ply import write_ply

    items = list(structures)
    if len(items) != 1:
        raise UsageError(f"{name}: a PLY file holds one structure, not {len(items)}")
    write_ply(items[0], out)
    return 1
