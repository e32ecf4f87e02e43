"""Embedding structure files: records stream through the model in batches into the HDF5 of DESIGN §4.

Memory stays flat in the number of records: one batch of structures is held at a time, and the
writer (`groupae_cli.io.embeddings`) appends rows a chunk at a time to resizable, chunked datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from groupae_cli.data import centred_batch, to_device
from groupae_cli.errors import Failure, UsageError
from groupae_cli.io.embeddings import Encoded, provenance, write_embeddings
from groupae_cli.io.parallel import parse_shard
from groupae_cli.io.records import Structure

K = TypeVar("K")

NON_FINITE = "the model gave NaN or Inf for it"


def set_fit(model, fit_steps: int, fit_hold_identity: bool, name: str) -> None:
    """Have `model` fit z (`fit_steps`, `fit_hold_identity`); a UsageError naming the model `name`
    where the fit is asked to hold a part of z the model does not have (`fit_hold_refusal`): said
    before any record is read, so nothing is written."""
    from groupae_cli.models.autoencoder import fit_hold_refusal

    model.fit_steps, model.fit_hold_identity = fit_steps, fit_hold_identity
    refused = fit_hold_refusal(model)
    if refused:
        raise UsageError(f"{name}: {refused}")


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


@torch.inference_mode()
def encode_batch(model, structures: Sequence[Structure], device: torch.device) -> dict[str, np.ndarray | list]:
    """The model's invariant embedding and group element for each structure, as numpy arrays."""
    batch, origins = centred_batch(structures, model.config.elements, model.dtype)
    if device.type == "cuda":  # page-locked host memory: the copies run asynchronously, at full bus speed
        batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    else:
        batch = to_device(batch, device)
    out = model.encode(batch)
    order = out["order"].cpu().numpy()
    z = out["z"].cpu().numpy()
    return {
        "embedding": z,
        "rotation": out["rotation"].cpu().numpy(),
        "translation": (out["translation"].double().cpu().numpy() + origins).astype(z.dtype),  # the input's frame
        "degenerate": out["frame_degenerate"].cpu().numpy(),
        "permutation": [order[b, : len(s)] for b, s in enumerate(structures)],
    }


def encode_items(items: Iterable[tuple[K, Structure | Failure]], model, device: torch.device,
                 batch_size: int = 64) -> Iterator[tuple[K, Encoded | Failure]]:
    """(key, record or failure) -> (key, encoded record or failure), in the order given.

    Records go through the model `batch_size` at a time; a record the model cannot take, or one it
    gives NaN or Inf for, becomes a Failure in its place. A failure read while records wait for
    their batch waits with them, so the order holds.
    """
    pending: list[tuple[K, Structure | Failure]] = []
    waiting = 0  # records among the pending

    def flush() -> Iterator[tuple[K, Encoded | Failure]]:
        nonlocal waiting
        batch = [s for _, s in pending if isinstance(s, Structure)]
        result = encode_batch(model, batch, device) if batch else {}
        if batch:  # one check for the batch, not three numpy calls per row
            finite = (np.isfinite(result["embedding"]).all(1) & np.isfinite(result["rotation"]).all((1, 2))
                      & np.isfinite(result["translation"]).all(1))
        k = 0
        for key, item in pending:
            if isinstance(item, Failure):
                yield key, item
                continue
            row = Encoded(item.name, item.index, item.numbers, result["embedding"][k], result["rotation"][k],
                          result["translation"][k], bool(result["degenerate"][k]), result["permutation"][k])
            yield key, row if finite[k] else Failure(item.source, item.index, NON_FINITE, item.name)
            k += 1
        pending.clear()
        waiting = 0

    for key, item in items:
        if isinstance(item, Structure):
            reason = usable(item, model)
            item = item if reason is None else Failure(item.source, item.index, reason, item.name)
        if isinstance(item, Failure) and not waiting:
            yield key, item  # nothing before it waits
            continue
        pending.append((key, item))
        waiting += isinstance(item, Structure)
        if waiting >= batch_size or len(pending) >= 4 * batch_size:
            yield from flush()
    yield from flush()


def embed_files(items: Iterable[tuple[int, Structure | Failure]], model, out: str | Path, attrs: dict,
                device: torch.device, batch_size: int = 64,
                on_failure: Callable[[Failure], None] | None = None, keep_empty: bool = False) -> int:
    """Write the embeddings of every usable record of `items` ((file number, record) pairs) to `out`.

    Failed or unusable records go to the file's `failed` table (and to `on_failure`), in input
    order whatever the batch size. Returns the number of records embedded; when that is 0 no file
    is written, unless `keep_empty` (see `write_embeddings`).
    """
    c = model.config
    return write_embeddings(encode_items(items, model, device, batch_size), out,
                            lambda: (c.embedding_dim, c.embedding_identity, attrs), on_failure, keep_empty)


__all__ = ["embed_files", "encode_batch", "encode_items", "parse_shard", "provenance", "usable"]
