"""`groupae merge`: the files of a sharded `groupae embed` (one per `--shard i/N`) made into the file
one unsharded run over the same inputs writes, dataset for dataset.

A sharded run takes the items (records and failures, across the input files in order) whose running
index is i modulo N. Within an input the items come in record order, and a failure of the whole file
(source_index -1) is that file's only item, so ordering records, and failures, by (source_file,
source_index) gives back the unsharded order. The merge is a k-way merge of the parts by that key, a
chunk of each part at a time, so memory stays flat however many records the parts hold.

Everything is checked before anything is written: each part a complete embed file, all of one run
(model, inputs, embedding size), each shard i/N there exactly once, and (a first pass over the keys
alone) each part in input order and no record or failure in two places. The output is written under
a temporary name and renamed when complete, so no error leaves a file under the final name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from groupae_cli import __version__
from groupae_cli.errors import UsageError
from groupae_cli.io.hdf5 import (
    embedding_schema,
    embedding_writer,
    open_embed_file,
    plain,
)

#: records read from each part at a time (fewer when there are many parts: MEMORY_ROWS in all)
CHUNK = 4096
MEMORY_ROWS = 1 << 16
#: attributes every part of one run shares, and what differs when they do not
SHARED = (
    ("model_sha256", "models"),
    ("input_files", "inputs"),
    ("embedding_dim", "embedding sizes"),
    ("embedding_identity", "embedding_identity"),
    ("fit_steps", "fit steps"),
    ("fit_hold_identity", "fits (the frame-free part held or fitted)"),
    ("groupae_version", "groupae versions"),
)
#: what a shared attribute means in a file written before groupae wrote it
_UNWRITTEN = {"fit_hold_identity": 0}
#: attributes of one writing of the file, not of its contents: the merged file gets its own
_OWN = ("shard", "command", "created", "complete", "n_records", "n_failed")
_FAILED_FIELDS = ("source_file", "source_index", "name", "reason")
_FILE_SHIFT = 40  # key = source_file << 40 | (source_index + 1)


@dataclass
class Part:
    """One shard's file, opened and checked."""

    path: str
    file: h5py.File
    shard: tuple[int, int] = (0, 1)
    n_records: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.n_records = int(self.file["embedding"].shape[0])

    @property
    def label(self) -> str:
        return f"{self.path} ({self.shard[0]}/{self.shard[1]})"


def _shard(path: str, f: h5py.File) -> tuple[int, int]:
    text = str(plain(f.attrs.get("shard", "")))
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not int(match[1]) < int(match[2]):
        raise UsageError(f"{path}: its shard attribute is {text!r}, not i/N; not written by groupae embed --shard")
    return int(match[1]), int(match[2])


def _listed(items: Sequence[str], shown: int = 6) -> str:
    """'a, b and c', or the first few and how many more."""
    items = list(items)
    if len(items) > shown:
        return f"{', '.join(items[:shown])} and {len(items) - shown} more"
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _shown(value) -> str:
    text = str(value)
    if isinstance(value, str) and len(value) == 64:  # a sha256
        text = value[:12] + "..."
    return text if len(text) <= 80 else text[:77] + "..."


def open_parts(paths: Sequence[str | Path]) -> list[Part]:
    """The parts opened and checked as the shards of one run, in shard order; UsageError, in one
    line, for anything that is not (and no file is left open)."""
    if not paths:
        raise UsageError("no files to merge")
    parts: list[Part] = []
    try:
        for path in map(str, paths):
            if not Path(path).is_file():
                raise UsageError(f"{path}: {'not a file' if Path(path).exists() else 'no such file'}")
            parts.append(Part(path, open_embed_file(path)))
            failed = parts[-1].file.get("failed")
            if not isinstance(failed, h5py.Dataset) or tuple(failed.dtype.names or ()) != _FAILED_FIELDS:
                raise UsageError(f"{path}: not a complete groupae embed file (no failed table of "
                                 f"{', '.join(_FAILED_FIELDS)})")
            parts[-1].shard = _shard(path, parts[-1].file)
        check_parts(parts)
    except BaseException:
        for part in parts:
            part.file.close()
        raise
    return sorted(parts, key=lambda p: p.shard)


def check_parts(parts: Sequence[Part]) -> None:
    """UsageError unless the parts are the shards of one run (same model, inputs, embedding size),
    each shard i/N of the same N exactly once."""
    first = parts[0]
    for name, what in SHARED:
        ours = plain(first.file.attrs.get(name, _UNWRITTEN.get(name)))
        for part in parts[1:]:
            theirs = plain(part.file.attrs.get(name, _UNWRITTEN.get(name)))
            if theirs != ours:
                raise UsageError(f"{first.path} and {part.path} are not shards of one run: different {what} "
                                 f"({_shown(ours)} vs {_shown(theirs)})")
    counts = sorted({p.shard[1] for p in parts})
    if len(counts) > 1:
        raise UsageError(f"the parts split the input in different numbers of shards: "
                         f"{_listed([p.label for p in parts])}")
    n = counts[0]
    by_index: dict[int, list[Part]] = {}
    for part in parts:
        by_index.setdefault(part.shard[0], []).append(part)
    for i, same in sorted(by_index.items()):
        if len(same) > 1:
            raise UsageError(f"shard {i}/{n} given more than once: {_listed([p.path for p in same])}")
    missing = [f"{i}/{n}" for i in range(n) if i not in by_index]
    if missing:
        raise UsageError(f"shard{'s' if len(missing) > 1 else ''} {_listed(missing)} missing; "
                         f"given: {_listed([p.label for p in sorted(parts, key=lambda p: p.shard)])}")


def merged_attrs(parts: Sequence[Part]) -> dict:
    """The attributes of the merged file: the run's (as an unsharded run has them: shard 0/1), the
    command that merged it and the parts it came from."""
    attrs = {plain(k): plain(v) for k, v in parts[0].file.attrs.items() if plain(k) not in _OWN}
    attrs.pop("embedding_dim")  # embedding_writer writes it
    return attrs | {"shard": "0/1", "command": f"groupae {__version__} merge",
                    "merged_from": [p.path for p in parts]}


def _keys(source_file: np.ndarray, source_index: np.ndarray) -> np.ndarray:
    return (source_file.astype(np.int64) << _FILE_SHIFT) + (source_index.astype(np.int64) + 1)


def _where(key: int, inputs: Sequence[str]) -> str:
    number, index = key >> _FILE_SHIFT, (key & ((1 << _FILE_SHIFT) - 1)) - 1
    name = inputs[number] if 0 <= number < len(inputs) else f"input {number}"
    return f"{name}: the whole file" if index < 0 else f"{name}: record {index}"


class _Cursor:
    """One part's rows, read a chunk at a time, in key order: its records ("records"), only their
    keys ("keys"), or its failures ("failed").

    `keys`, `rows` (name -> array) and, for records, `atoms` (name -> flat array) and `counts`
    (atoms per row) hold what has been read and not yet merged.
    """

    def __init__(self, part: Part, kind: str, chunk: int, inputs: Sequence[str]):
        self.part, self.kind, self.chunk, self.inputs = part, kind, chunk, inputs
        f = part.file
        self.order = None
        self.atom_names: list[str] = []
        self.done, self.last = 0, -1
        if kind == "failed":
            self.names, self.total = ["failed"], int(f["failed"].shape[0])
            keys = self._checked(f["failed"].fields(["source_file", "source_index"])[:], check_order=False)
            if np.any(np.diff(keys) <= 0):  # embed writes a failure the model met after the rest of its batch
                self.order = np.argsort(keys, kind="stable")
        else:
            per_record, per_atom = embedding_schema(int(f.attrs["embedding_dim"]))
            self.names, self.total = list(per_record) if kind == "records" else ["source_file", "source_index"], \
                part.n_records
            self.atom_names = list(per_atom) if kind == "records" else []
        self.keys = np.zeros(0, np.int64)
        self.rows: dict[str, np.ndarray] = {}
        self.atoms: dict[str, np.ndarray] = {}
        self.counts = np.zeros(0, np.int64)

    @property
    def more(self) -> bool:
        """Rows left in the file, not yet read."""
        return self.done < self.total

    def _checked(self, table, check_order: bool = True) -> np.ndarray:
        source_file, source_index = table["source_file"], table["source_index"]
        if np.any((source_file < 0) | (source_file >= len(self.inputs)) | (source_index < -1)
                  | (source_index >= (1 << _FILE_SHIFT) - 1)):
            raise UsageError(f"{self.part.path}: source_file or source_index out of range; a damaged file")
        keys = _keys(source_file, source_index)
        steps = np.diff(np.concatenate([[self.last], keys]))
        if check_order and np.any(steps <= 0):
            at = _where(int(keys[np.flatnonzero(steps <= 0)[0]]), self.inputs)
            raise UsageError(f"{self.part.path}: its {'failures' if self.kind == 'failed' else 'records'} are not "
                             f"in input order, or repeat one (at {at}); not written by groupae embed")
        return keys

    def fill(self) -> None:
        """Read the next chunk if all that was read is merged."""
        if len(self.keys) or not self.more:
            return
        f, start = self.part.file, self.done
        stop = min(start + self.chunk, self.total)
        if self.kind == "failed":
            if self.order is None:
                rows = f["failed"][start:stop]
            else:  # h5py reads a selection in increasing order
                wanted = self.order[start:stop]
                rows = f["failed"][np.sort(wanted)][np.argsort(np.argsort(wanted))]
            self.rows = {"failed": rows}
        else:
            self.rows = {name: f[name][start:stop] for name in self.names}
            if self.atom_names:
                offsets = f["offsets"][start : stop + 1]
                self.atoms = {name: f[name][offsets[0] : offsets[-1]] for name in self.atom_names}
                self.counts = np.diff(offsets)
        self.keys = self._checked(self.rows if self.kind != "failed" else rows)
        self.last = int(self.keys[-1])
        self.done = stop

    def take(self, count: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """(keys, rows, atoms, counts) of the first `count` rows read, which leave the buffer."""
        atoms_end = int(self.counts[:count].sum())
        taken = (self.keys[:count], {k: v[:count] for k, v in self.rows.items()},
                 {k: v[:atoms_end] for k, v in self.atoms.items()}, self.counts[:count])
        self.keys = self.keys[count:]
        self.rows = {k: v[count:] for k, v in self.rows.items()}
        self.atoms = {k: v[atoms_end:] for k, v in self.atoms.items()}
        self.counts = self.counts[count:]
        return taken


def _merge(cursors: Sequence[_Cursor], inputs: Sequence[str], emit: Callable | None = None) -> None:
    """Hand `emit(rows, atoms, counts)` the cursors' rows in key order, a round at a time: every row
    read with a key up to the smallest last key read of a part with rows left (no part can hold a
    smaller key still unread). UsageError for a key held twice; with no `emit`, that is all it does."""
    while True:
        for cursor in cursors:
            cursor.fill()
        live = [c for c in cursors if len(c.keys)]
        if not live:
            return
        waiting = [int(c.keys[-1]) for c in live if c.more]
        bound = min(waiting) if waiting else np.iinfo(np.int64).max
        taken = [(c, c.take(int(np.searchsorted(c.keys, bound, side="right")))) for c in live]
        keys = np.concatenate([t[0] for _, t in taken])
        order = np.argsort(keys, kind="stable")
        same = np.flatnonzero(np.diff(keys[order]) == 0)
        if same.size:
            owner = np.repeat(np.arange(len(taken)), [len(t[0]) for _, t in taken])
            a, b = (taken[owner[order[same[0] + k]]][0].part.path for k in (0, 1))
            where = _where(int(keys[order[same[0]]]), inputs)
            raise UsageError(f"{a} holds {where} twice" if a == b else f"{a} and {b} both hold {where}; the parts overlap")
        if emit is None:
            continue
        _, (_, rows, atoms, counts) = taken[0]
        rows = {name: np.concatenate([t[1][name] for _, t in taken])[order] for name in rows}
        counts = np.concatenate([t[3] for _, t in taken])
        if atoms:
            starts = np.cumsum(counts) - counts
            counts = counts[order]
            index = np.repeat(starts[order] - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
            atoms = {name: np.concatenate([t[2][name] for _, t in taken])[index] for name in atoms}
        emit(rows, atoms, counts)


def merge_parts(paths: Sequence[str | Path], out: str | Path,
                on_records: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Merge the files of a sharded `groupae embed` into `out`, the file one unsharded run writes;
    returns (records, failures). `on_records(done, total)` follows the records merged. UsageError,
    in one line, and no file at `out`, when the parts are not all the shards of one run."""
    parts = open_parts(paths)
    try:
        attrs = merged_attrs(parts)
        inputs = [str(name) for name in attrs["input_files"]]
        chunk = min(CHUNK, max(64, MEMORY_ROWS // len(parts)))

        def cursors(*kinds: str) -> list[_Cursor]:
            return [_Cursor(p, kind, chunk, inputs) for p in parts for kind in kinds]

        _merge(cursors("keys", "failed"), inputs)  # each record in one place, before anything is written
        total = sum(p.n_records for p in parts)
        if total == 0:
            raise UsageError(f"{out}: not written: the parts hold no embedded records")
        writer = embedding_writer(out, int(parts[0].file.attrs["embedding_dim"]), attrs)
        try:
            def records(rows, atoms, counts) -> None:
                writer.append(rows, atoms, counts)
                if on_records is not None:
                    on_records(writer.n_records, total)

            _merge(cursors("records"), inputs, records)
            _merge(cursors("failed"), inputs, lambda rows, atoms, counts: writer.add_failed(rows["failed"]))
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return writer.n_records, writer.n_failed
    finally:
        for part in parts:
            part.file.close()


__all__ = ["Part", "check_parts", "merge_parts", "merged_attrs", "open_parts"]
