"""Embedding structure files: records stream through the model in batches into the HDF5 of DESIGN §4.

Memory stays flat in the number of records: one batch of structures is held at a time, and the
writer appends each batch to resizable, chunked datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from groupae_cli.data import centred_batch, to_device
from groupae_cli.errors import Failure
from groupae_cli.io.hdf5 import embedding_writer
from groupae_cli.io.parallel import parse_shard
from groupae_cli.io.records import Structure

NON_FINITE = "the model gave NaN or Inf for it"


def usable(structure: Structure, model) -> str | None:
    """Why the model cannot take this structure, or None."""
    c = model.config
    if len(structure) > c.max_atoms:
        return f"{len(structure)} atoms; the model takes at most {c.max_atoms}"
    strangers = sorted(set(structure.numbers.tolist()) - set(c.elements))
    if strangers:
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[z] if z < len(chemical_symbols) else str(z) for z in strangers)
        return f"element{'s' if len(strangers) > 1 else ''} {names} unknown to the model"
    return None


def provenance(model_path, model_name: str | None, input_files: list[str], shard: tuple[int, int],
               command: str) -> dict:
    """The attributes an embed file carries: the model (name, sha256), the inputs, the shard, what
    its datasets mean and what wrote it."""
    from groupae_cli import __version__
    from groupae_cli.io.checkpoint import sha256

    attrs = {"model": model_name or "", "model_sha256": sha256(model_path) if model_path else ""}
    return attrs | {
        "input_files": input_files,
        "shard": f"{shard[0]}/{shard[1]}",
        "permutation_convention": "permutation[offsets[i] + k] is the input atom of record i in canonical slot k",
        "degenerate_meaning": "the input's symmetry cancels the learned frame vectors; anchor atoms define it",
        "command": f"groupae {__version__} {command}",
    }


@torch.inference_mode()
def encode_batch(model, structures: Sequence[Structure], device: torch.device) -> dict[str, np.ndarray | list]:
    """The model's invariant embedding and group element for each structure, as numpy arrays."""
    batch, origins = centred_batch(structures, model.config.elements, model.dtype)
    out = model.encode(to_device(batch, device))
    order = out["order"].cpu().numpy()
    z = out["z"].cpu().numpy()
    return {
        "embedding": z,
        "rotation": out["rotation"].cpu().numpy(),
        "translation": (out["translation"].double().cpu().numpy() + origins).astype(z.dtype),  # the input's frame
        "degenerate": out["frame_degenerate"].cpu().numpy(),
        "permutation": [order[b, : len(s)] for b, s in enumerate(structures)],
    }


def embed_files(items: Iterable[tuple[int, Structure | Failure]], model, out: str | Path, attrs: dict,
                device: torch.device, batch_size: int = 64,
                on_failure: Callable[[Failure], None] | None = None, keep_empty: bool = False) -> int:
    """Write the embeddings of every usable record of `items` ((file number, record) pairs) to `out`.

    Failed or unusable records go to the file's `failed` table (and to `on_failure`), in input
    order whatever the batch size (a record the model gives NaN for is known only when its batch
    is encoded, so failures wait for their batch). A shard's records are chosen by the reader
    (`RecordStream`), which does not parse the others. Returns the number of records embedded;
    when that is 0 no file is written (a file of failures alone would look like a finished job),
    unless `keep_empty` (a shard of a sharded run, which `groupae merge` expects).
    """
    written = 0
    pending: list[tuple[int, Structure | Failure]] = []  # the batch, and the failures among it, in order
    structures_pending = 0

    identity = {"embedding_identity": model.config.embedding_identity,
                "embedding_identity_meaning": "embedding[:, :embedding_identity] sees only frame-free features "
                                              "(the atoms' environments, element counts): the molecule whatever "
                                              "its conformation; the rest also sees the canonical pose"}
    writer = embedding_writer(out, model.config.embedding_dim, attrs | identity)
    try:

        def reject(file_number: int, failure: Failure) -> None:
            writer.fail(file_number, failure.index, failure.name, failure.reason)
            if on_failure is not None:
                on_failure(failure)

        def write(batch: list[tuple[int, Structure]], result: dict) -> None:
            nonlocal written
            structures = [s for _, s in batch]
            records = {
                "embedding": result["embedding"], "rotation": result["rotation"],
                "translation": result["translation"], "degenerate": result["degenerate"],
                "n_atoms": [len(s) for s in structures], "name": [s.name for s in structures],
                "source_file": [f for f, _ in batch], "source_index": [s.index for s in structures],
            }
            atoms = {"permutation": result["permutation"], "atomic_numbers": [s.numbers for s in structures]}
            writer.append(records, atoms)
            written += len(structures)

        def flush() -> None:
            nonlocal structures_pending
            batch = [(f, s) for f, s in pending if isinstance(s, Structure)]
            good = np.ones(len(batch), dtype=bool)
            result: dict = {}
            if batch:
                result = encode_batch(model, [s for _, s in batch], device)
                good = np.isfinite(result["embedding"]).all(1) & np.isfinite(result["rotation"]).all((1, 2)) \
                    & np.isfinite(result["translation"]).all(1)
            verdict = iter(good)
            for file_number, item in pending:  # the failed table in input order
                if isinstance(item, Failure):
                    reject(file_number, item)
                elif not next(verdict):
                    reject(file_number, Failure(item.source, item.index, NON_FINITE, item.name))
            if not good.all():
                keep = np.flatnonzero(good)
                batch = [batch[i] for i in keep]
                result = {k: [v[i] for i in keep] if isinstance(v, list) else v[good] for k, v in result.items()}
            if batch:
                write(batch, result)
            pending.clear()
            structures_pending = 0

        for file_number, item in items:
            if isinstance(item, Structure):
                reason = usable(item, model)
                item = item if reason is None else Failure(item.source, item.index, reason, item.name)
            if isinstance(item, Failure) and not structures_pending:
                reject(file_number, item)  # nothing before it waits: written at once
                continue
            pending.append((file_number, item))
            structures_pending += isinstance(item, Structure)
            if structures_pending >= batch_size or len(pending) >= 4 * batch_size:
                flush()
        flush()
    except BaseException:
        writer.abort()
        raise
    if written or keep_empty:
        writer.close()
    else:
        writer.abort()
    return written


__all__ = ["embed_files", "encode_batch", "parse_shard", "provenance", "usable"]
