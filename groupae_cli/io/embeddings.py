"""Writing embed files from encoded records, without torch (DESIGN §4).

The model's side (`groupae_cli.embed`) turns records into `Encoded` rows, in this process or in
worker processes (`groupae_cli.io.parallel`); this side writes rows and failures, in input order,
into the HDF5 file. Memory stays flat in the number of records: rows are appended a chunk at a
time to resizable, chunked datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from groupae_cli.errors import Failure

#: Rows written per HDF5 append: one compressed chunk of the record datasets (io/hdf5.py), so each
#: chunk is compressed and written once, not rewritten as it fills
WRITE_CHUNK = 1024
IDENTITY_MEANING = ("embedding[:, :embedding_identity] sees only frame-free features (the atoms' environments, "
                    "element counts): the molecule whatever its conformation; the rest also sees the canonical pose")


@dataclass
class Encoded:
    """One record through the model: its embedding and group element (the input's frame), with what
    the file keeps of the record (not its coordinates, bonds or SD tags, which workers need not
    send back)."""

    name: str
    index: int
    numbers: np.ndarray  # (n,) atomic numbers
    embedding: np.ndarray  # (d,)
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    degenerate: bool
    permutation: np.ndarray  # (n,) the input atom in each canonical slot


def provenance(model_path, model_name: str | None, input_files: list[str], shard: tuple[int, int],
               command: str, fit_steps: int = 0, fit_hold_identity: bool = False) -> dict:
    """The attributes an embed file carries: the model (name, sha256), the inputs, the shard, the
    steps z was fitted by (and whether its frame-free part was held), what its datasets mean and
    what wrote it."""
    from groupae_cli import __version__
    from groupae_cli.io.checkpoint import sha256

    attrs = {"model": model_name or "", "model_sha256": sha256(model_path) if model_path else ""}
    return attrs | {
        "input_files": input_files,
        "shard": f"{shard[0]}/{shard[1]}",
        "fit_steps": int(fit_steps),
        # 1: the fit left embedding[:, :embedding_identity] as the encoder made it (0 without a fit)
        "fit_hold_identity": int(bool(fit_steps and fit_hold_identity)),
        "permutation_convention": "permutation[offsets[i] + k] is the input atom of record i in canonical slot k",
        "degenerate_meaning": "the input's symmetry cancels the learned frame vectors; anchor atoms define it",
        "command": f"groupae {__version__} {command}",
    }


def write_embeddings(items: Iterable[tuple[int, Encoded | Failure]], out: str | Path,
                     attrs: Callable[[], tuple[int, int, dict]],
                     on_failure: Callable[[Failure], None] | None = None, keep_empty: bool = False) -> int:
    """Write (file number, encoded record or failure) items, in the order given, to `out`.

    `attrs()` gives (embedding size, size of its frame-free block, file attributes); it is called
    once the first item is in (a worker process that loads the model says what it is). Failures go
    to the `failed` table (and to `on_failure`). Returns the number of records written; when that
    is 0 no file is written (a file of failures alone would look like a finished job), unless
    `keep_empty` (a shard of a sharded run, which `groupae merge` expects).
    """
    from groupae_cli.io.hdf5 import embedding_writer

    writer = None
    written = 0
    rows: list[tuple[int, Encoded]] = []

    def open_writer():
        dim, identity, file_attrs = attrs()
        return embedding_writer(out, dim, file_attrs | {"embedding_identity": identity,
                                                        "embedding_identity_meaning": IDENTITY_MEANING})

    def flush() -> None:
        nonlocal written
        if not rows:
            return
        records = {
            "embedding": np.stack([e.embedding for _, e in rows]), "rotation": np.stack([e.rotation for _, e in rows]),
            "translation": np.stack([e.translation for _, e in rows]),
            "degenerate": np.array([e.degenerate for _, e in rows], dtype=bool),
            "n_atoms": [len(e.numbers) for _, e in rows], "name": [e.name for _, e in rows],
            "source_file": [f for f, _ in rows], "source_index": [e.index for _, e in rows],
        }
        atoms = {"permutation": [e.permutation for _, e in rows], "atomic_numbers": [e.numbers for _, e in rows]}
        writer.append(records, atoms)
        written += len(rows)
        rows.clear()

    try:
        for file_number, item in items:
            if writer is None:
                writer = open_writer()
            if isinstance(item, Failure):  # (the failed table is in input order, as the rows are)
                writer.fail(file_number, item.index, item.name, item.reason)
                if on_failure is not None:
                    on_failure(item)
                continue
            rows.append((file_number, item))
            if len(rows) >= WRITE_CHUNK:
                flush()
        if writer is None and keep_empty:
            writer = open_writer()
        flush()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        if written or keep_empty:
            writer.close()
        else:
            writer.abort()
    return written


__all__ = ["Encoded", "provenance", "write_embeddings"]
