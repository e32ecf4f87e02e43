"""The HDF5 output of `groupae embed` (DESIGN §4), written batch by batch.

Per-record datasets have one row per record; per-atom datasets are the records' atoms
concatenated, record i owning `offsets[i]:offsets[i+1]`. Everything is chunked, compressed and
resizable, so memory stays flat however many records pass through. The file is written under a
hidden temporary name beside the target and renamed only by `close()`; an interrupted run leaves
no file under the final name, and a finished file carries `complete = True`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from groupae_cli import __version__
from groupae_cli.errors import output_error
from groupae_cli.io.formats import partial_path, remove_stale_partials

STRING = h5py.string_dtype("utf-8")
GROUP = "SE(3) x S_n"
_RECORD_CHUNK = 1024
_ATOM_CHUNK = 1 << 15
#: Free space (bytes) kept on the output's file system: HDF5 mishandles a write that fails for want of
#: space (h5py swallows the error and the process can die at C level), so the writer stops first.
SPACE_MARGIN = 32 << 20
_ABANDONED: list = []  # see RecordWriter._abandon
_FAILED_DTYPE = np.dtype([("source_file", np.int32), ("source_index", np.int64), ("name", STRING), ("reason", STRING)])


def embedding_schema(dim: int) -> tuple[dict, dict]:
    """(per-record, per-atom) datasets of an embed file: name -> (trailing shape, dtype)."""
    per_record = {
        "embedding": ((dim,), np.float32),
        "rotation": ((3, 3), np.float32),
        "translation": ((3,), np.float32),
        "n_atoms": ((), np.int32),
        "name": ((), STRING),
        "source_file": ((), np.int32),  # index into attrs["input_files"]
        "source_index": ((), np.int64),  # record index within that file
        "degenerate": ((), np.bool_),
    }
    per_atom = {"permutation": np.int32, "atomic_numbers": np.int16}
    return per_record, per_atom


class RecordWriter:
    """Append-only writer of per-record and ragged per-atom datasets plus a `failed` table."""

    def __init__(
        self,
        path: str | Path,
        per_record: Mapping[str, tuple[tuple[int, ...], object]],
        per_atom: Mapping[str, object],
        attrs: Mapping[str, object] | None = None,
    ):
        self.path = Path(path)
        self.tmp_path = partial_path(self.path)
        self.per_record = dict(per_record)
        self.per_atom = dict(per_atom)
        self.n_records = 0
        self.n_atoms = 0
        self.n_failed = 0
        remove_stale_partials(self.path)
        self._file = None
        try:
            self._create(attrs)
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from exc

    def _create(self, attrs: Mapping[str, object] | None) -> None:
        self._file = f = h5py.File(self.tmp_path, "w")
        for name, (shape, dtype) in self.per_record.items():
            f.create_dataset(name, (0, *shape), dtype=dtype, maxshape=(None, *shape),
                             chunks=(_RECORD_CHUNK, *shape), compression="gzip", shuffle=True)
        for name, dtype in self.per_atom.items():
            f.create_dataset(name, (0,), dtype=dtype, maxshape=(None,), chunks=(_ATOM_CHUNK,),
                             compression="gzip", shuffle=True)
        f.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(_RECORD_CHUNK,), compression="gzip")
        f.create_dataset("failed", (0,), dtype=_FAILED_DTYPE, maxshape=(None,), chunks=(256,))
        f.attrs["groupae_version"] = __version__
        f.attrs["group"] = GROUP
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.attrs["complete"] = False
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        # the datasets stay open while writing: HDF5 flushes a dataset's chunks when its last handle
        # closes, and a flush that fails there is swallowed by h5py and corrupts the process
        self._datasets = {name: f[name] for name in f}

    def _grow(self, name: str, rows: np.ndarray) -> None:
        dataset = self._datasets[name]
        start = dataset.shape[0]
        dataset.resize(start + len(rows), axis=0)
        dataset[start:] = rows

    def _check_space(self, nbytes: int) -> None:
        """OSError(ENOSPC) before a write that would leave the output's file system nearly full."""
        total, _, free = shutil.disk_usage(self.tmp_path.parent)
        if total and free < 2 * nbytes + SPACE_MARGIN:  # (a file system that reports no size: unknown)
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free >> 20} MiB free; the HDF5 writer "
                                        f"stops below {SPACE_MARGIN >> 20} MiB)", str(self.tmp_path))

    def append(self, records: Mapping[str, Sequence | np.ndarray], atoms: Mapping[str, Sequence[np.ndarray]],
               counts: Sequence[int] | np.ndarray | None = None) -> None:
        """Add a batch: `records[name]` has one row per record, `atoms[name]` one array per record;
        or, with `counts` (atoms per record), `atoms[name]` the records' atoms concatenated."""
        if set(records) != set(self.per_record) or set(atoms) != set(self.per_atom):
            raise ValueError(f"batch keys {sorted(records)} + {sorted(atoms)} do not match the schema")
        if counts is None:
            counts = np.array([len(a) for a in next(iter(atoms.values()))], dtype=np.int64) if atoms else None
            for name, arrays in atoms.items():
                if not np.array_equal([len(a) for a in arrays], counts):
                    raise ValueError(f"{name}: per-record lengths differ from the other per-atom datasets")
            atoms = {name: np.concatenate(arrays) if len(arrays) else np.zeros(0) for name, arrays in atoms.items()}
        else:
            counts = np.asarray(counts, dtype=np.int64)
            if len(counts) != len(next(iter(records.values()))):
                raise ValueError(f"{len(counts)} atom counts for a batch of {len(next(iter(records.values())))}")
            atoms = {name: np.asarray(flat) for name, flat in atoms.items()}
            for name, flat in atoms.items():
                if len(flat) != counts.sum():
                    raise ValueError(f"{name}: {len(flat)} atoms, the counts say {counts.sum()}")
        try:
            self._append(records, atoms, counts)
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from exc

    def _append(self, records: Mapping[str, Sequence | np.ndarray], atoms: Mapping[str, np.ndarray],
                counts: np.ndarray | None) -> None:
        size = len(next(iter(records.values())))
        self._check_space(sum(np.asarray(v).nbytes for v in records.values()) + sum(a.nbytes for a in atoms.values()))
        for name, value in records.items():
            rows = np.asarray(value, dtype=object if self.per_record[name][1] is STRING else self.per_record[name][1])
            if len(rows) != size:
                raise ValueError(f"{name}: {len(rows)} rows in a batch of {size}")
            self._grow(name, rows)
        for name, flat in atoms.items():
            self._grow(name, flat.astype(self.per_atom[name]))
        if counts is not None:
            self._grow("offsets", self.n_atoms + np.cumsum(counts))
            self.n_atoms += int(counts.sum())
        self.n_records += size

    def fail(self, source_file: int, source_index: int | None, name: str, reason: str) -> None:
        """Record a failed input record (source_index -1: the whole file)."""
        self.add_failed(np.array([(source_file, -1 if source_index is None else source_index, name, reason)],
                                 dtype=_FAILED_DTYPE))

    def add_failed(self, rows: np.ndarray) -> None:
        """Append rows of the `failed` table (fields source_file, source_index, name, reason)."""
        try:
            self._grow("failed", rows)
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from exc
        self.n_failed += len(rows)

    def close(self) -> Path:
        """Finish the file and move it to its final name (OutputError, and no file, if that fails)."""
        try:
            f = self._file
            f.attrs["n_records"] = self.n_records
            f.attrs["n_failed"] = self.n_failed
            f.attrs["complete"] = True
            self._datasets = {}
            f.close()
            self._file = None
            os.replace(self.tmp_path, self.path)
        except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError for a flush that failed
            self._abandon()
            self.abort()
            error = output_error(self.path, exc if isinstance(exc, OSError) else OSError(str(exc)))
            error.fatal = True
            raise error from exc
        return self.path

    def _abandon(self) -> None:
        """Keep the handles of a file whose flush failed alive: HDF5 would flush again when they are
        freed, and fail again. Its state is unsound after such a failure (freeing them at exit can
        crash), so the error raised is `fatal`: the command line leaves with os._exit."""
        _ABANDONED.append((self._file, self._datasets))
        self._file, self._datasets = None, {}

    def abort(self) -> None:
        """Drop the partial file (closing it may fail again, e.g. on a full disk: ignored)."""
        self._datasets = {}
        try:
            if self._file is not None:
                self._file.close()
        except Exception:  # noqa: BLE001, S110 - the file is being thrown away
            pass
        finally:
            self._file = None
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def embedding_writer(path: str | Path, dim: int, attrs: Mapping[str, object] | None = None) -> RecordWriter:
    """A RecordWriter with the embed schema; `attrs` adds provenance (model, sha256, inputs)."""
    per_record, per_atom = embedding_schema(dim)
    return RecordWriter(path, per_record, per_atom, {"embedding_dim": dim, **(attrs or {})})


def check_embed_file(f: h5py.File, path: str | Path, model=None) -> None:
    """UsageError, in one line, unless the open file `f` is a complete `groupae embed` output whose
    datasets agree with each other; with `model`, also unless it was written by that model (same
    embedding size and, where both are known, the same checkpoint sha256)."""
    from groupae_cli.errors import UsageError

    def refuse(why: str):
        raise UsageError(f"{path}: not a complete groupae embed file ({why})")

    if "embedding_dim" not in f.attrs:
        refuse("no embedding_dim attribute: not written by groupae embed")
    if not f.attrs.get("complete", False):
        refuse("not marked complete: an interrupted write")
    dim = int(f.attrs["embedding_dim"])
    per_record, per_atom = embedding_schema(dim)
    for name in [*per_record, *per_atom, "offsets"]:
        if not isinstance(f.get(name), h5py.Dataset):
            refuse(f"no dataset {name!r}")
    n = f["embedding"].shape[0]
    for name, (shape, _) in per_record.items():
        if f[name].shape != (n, *shape):
            refuse(f"{name} has shape {f[name].shape}, {n} records need {(n, *shape)}")
    offsets = f["offsets"][:]
    if offsets.shape != (n + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 1):
        refuse(f"offsets are not {n + 1} increasing atom counts from 0")
    for name in per_atom:
        if f[name].shape != (offsets[-1],):
            refuse(f"{name} has shape {f[name].shape}, the offsets need ({offsets[-1]},)")
    if model is None:
        return
    if dim != model.config.embedding_dim:
        raise UsageError(f"{path}: embeddings of size {dim}, the model's are {model.config.embedding_dim}; "
                         "decode with the model that wrote them")
    stored = plain(f.attrs.get("model_sha256", ""))
    checkpoint = (getattr(model, "checkpoint", None) or {}).get("path")
    if stored and checkpoint:
        from groupae_cli.io.checkpoint import sha256, shipped_name_of

        ours = sha256(checkpoint)
        if ours != stored:
            shipped = shipped_name_of(stored)  # e.g. a file the previous default model wrote
            advice = (f"it is the shipped model {shipped!r}: --model {shipped}" if shipped else
                      "decode with the model that wrote them (--model)")
            raise UsageError(f"{path}: written by model {plain(f.attrs.get('model', ''))!r} (sha256 {stored[:12]}...), "
                             f"not {checkpoint} ({ours[:12]}...); {advice}")


def open_embed_file(path: str | Path, model=None) -> h5py.File:
    """An embed file opened for reading and checked (check_embed_file); UsageError, in one line,
    for one h5py cannot read (truncated, corrupt, not HDF5). The caller closes it."""
    try:
        check_global_heaps(path)
        f = h5py.File(path, "r")
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise unreadable(path, exc) from None
    try:
        check_embed_file(f, path, model)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        f.close()
        raise unreadable(path, exc) from None
    except BaseException:
        f.close()
        raise
    return f


def check_global_heaps(path: str | Path) -> None:
    """ValueError for an HDF5 file whose global heap collections (where variable-length strings
    live: attributes, names, failure reasons) do not parse. HDF5 walks a collection's objects by their
    sizes, and a corrupt size of 0 makes it loop for ever (HDF5 2.0, reading any string of that
    collection); this walks each collection the same way, in bounded steps, before h5py does. A
    collection is found by its signature ("GCOL", version 1, three reserved zero bytes)."""
    import mmap

    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < 16:
            return  # h5py refuses it
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            lengths = {0: data[14], 1: data[14], 2: data[10], 3: data[10]}.get(data[8], 8) \
                if data[:8] == b"\x89HDF\r\n\x1a\n" else 8
            if lengths not in (2, 4, 8):
                return  # h5py refuses it
            header = 2 + 2 + 4 + lengths  # an object's: index, reference count, reserved, size
            start = data.find(b"GCOL\x01\x00\x00\x00")
            while start >= 0:
                _walk_collection(data, start, lengths, header)
                start = data.find(b"GCOL\x01\x00\x00\x00", start + 8)


def _walk_collection(data, start: int, lengths: int, header: int) -> None:
    size = int.from_bytes(data[start + 8:start + 8 + lengths], "little")
    end = start + size
    if size < 8 + lengths or end > len(data):
        raise ValueError(f"global heap at byte {start} runs past the end of the file")
    p = start + 8 + lengths
    while p + header <= end:
        index = int.from_bytes(data[p:p + 2], "little")
        length = int.from_bytes(data[p + 8:p + 8 + lengths], "little")
        need = header + (length + 7) // 8 * 8 if index else length  # index 0: the free space, header included
        if need <= 0 or p + need > end:
            raise ValueError(f"global heap at byte {start} is corrupt (object of {length} bytes at byte {p})")
        p += need


def unreadable(path: str | Path, exc: Exception):
    """The UsageError for an embed file that h5py fails to read."""
    from groupae_cli.errors import UsageError

    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return UsageError(f"{path}: not a readable groupae embed file ({why})")


def plain(value):
    """An HDF5 attribute or value as plain Python: bytes as str, arrays as lists, numpy scalars as numbers.
    Bytes that are not UTF-8 (a damaged file; h5py keeps them as surrogates) become U+FFFD, so the
    value can be printed."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(path: str | Path) -> dict:
    """What an HDF5 file holds: attributes, and shape and dtype of every dataset (UsageError, in
    one line, for a file h5py cannot read: truncated, corrupt, not HDF5)."""
    from groupae_cli.errors import UsageError

    try:
        check_global_heaps(path)
        return _describe(path)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(f"{path}: not a readable HDF5 file ({why})") from None


def _describe(path: str | Path) -> dict:
    datasets: dict[str, dict] = {}
    with h5py.File(path, "r") as f:
        attrs = {plain(k): plain(v) for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                datasets[plain(name)] = {"shape": list(obj.shape), "dtype": str(obj.dtype) if obj.dtype.names is None
                                  else ", ".join(obj.dtype.names)}

        f.visititems(visit)
        failed = [
            {"source_file": int(r["source_file"]), "source_index": int(r["source_index"]),
             "name": plain(r["name"]), "reason": plain(r["reason"])}
            for r in (f["failed"][:] if "failed" in f else [])
        ]
    return {"path": str(path), "attrs": attrs, "datasets": datasets, "failed": failed}
