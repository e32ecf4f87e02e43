"""Decoding structures back: encode + decode with per-record error, or decode an `embed` HDF5 file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from groupae_cli.data import centred_batch, to_device, type_indices
from groupae_cli.errors import Failure
from groupae_cli.io.records import Structure


@dataclass
class Reconstruction:
    """One decoded structure: `structure` in the input's frame and atom order (elements as
    decoded, the input's bonds and charges), its `rmsd` (Å) and `element_accuracy` against the
    input; both None when it was decoded from an embed file (no input to compare with)."""

    structure: Structure  # the decoded structure, in the input's frame and atom order
    rmsd: float | None  # Å, against the input (None when decoding an embed file)
    element_accuracy: float | None

    def row(self) -> dict:
        s = self.structure
        return {"name": s.name, "source": s.source, "index": s.index, "n_atoms": len(s),
                "rmsd": self.rmsd, "element_accuracy": self.element_accuracy}


def _elements(model, logits: torch.Tensor) -> np.ndarray:
    return np.asarray(model.config.elements)[logits.argmax(-1).cpu().numpy()]


@torch.inference_mode()
def reconstruct(model, structures: Sequence[Structure], device: torch.device) -> list[Reconstruction]:
    """Encode and decode a batch of structures; X_hat = P^T (Y R^T) + t with the hard permutation.

    The decoded structures keep the input's bonds and formal charges, and carry their RMSD and
    element accuracy as SD properties.
    """
    batch, origins = centred_batch(structures, model.config.elements, model.dtype)
    out = model(to_device(batch, device))
    x_hat = out["reconstruction"].double().cpu().numpy() + np.repeat(origins, [len(s) for s in structures], axis=0)
    elements = _elements(model, out["reconstruction_logits"])
    results, start = [], 0
    for s in structures:
        stop = start + len(s)
        positions, numbers = x_hat[start:stop], elements[start:stop]
        rmsd = float(np.sqrt(((positions - s.positions) ** 2).sum(-1).mean()))
        accuracy = float((numbers == s.numbers).mean())
        properties = {"groupae_rmsd": f"{rmsd:.4f}", "groupae_element_accuracy": f"{accuracy:.4f}"}
        # same atom order as the input, so its bonds and charges carry over
        decoded = Structure(numbers, positions, s.name, s.source, s.index, bonds=s.bonds,
                            bond_orders=s.bond_orders, charges=s.charges, properties=properties)
        results.append(Reconstruction(decoded, rmsd, accuracy))
        start = stop
    return results


NON_FINITE = "the model gave NaN or Inf coordinates for it"


def finite(result: Reconstruction) -> Reconstruction | Failure:
    """The reconstruction, or a Failure when the model's output for it is not finite."""
    if np.isfinite(result.structure.positions).all():
        return result
    s = result.structure
    return Failure(s.source, s.index, NON_FINITE, s.name)


def reconstruct_stream(model, items: Iterable[Structure | Failure], device: torch.device,
                       batch_size: int) -> Iterator[Reconstruction | Failure]:
    """Reconstructions of a record stream, in order, a batch at a time; failures pass through, and
    a record the model decodes to NaN or Inf becomes one."""
    from groupae_cli.embed import usable

    def decoded(batch):
        return (finite(r) for r in reconstruct(model, batch, device))

    pending: list[Structure] = []
    for item in items:
        if isinstance(item, Structure) and (reason := usable(item, model)) is not None:
            item = Failure(item.source, item.index, reason, item.name)
        if isinstance(item, Failure):
            yield from decoded(pending) if pending else ()
            pending = []
            yield item
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            yield from decoded(pending)
            pending = []
    if pending:
        yield from decoded(pending)


def decode_embeddings(model, path: str | Path, device: torch.device,
                      batch_size: int) -> Iterator[Reconstruction | Failure]:
    """Structures decoded from an `embed` HDF5 file: z, the composition in canonical order, and the
    stored rotation, translation and permutation put each back in its input's frame and order.

    UsageError, in one line, for a file that is not a complete embed file (truncated, corrupt,
    foreign) or that another model wrote (its `model_sha256` is not this model's checkpoint's); a
    record whose stored values or decoding are not finite, or whose permutation is not one,
    becomes a Failure.
    """
    from groupae_cli.io.hdf5 import open_embed_file, unreadable

    with open_embed_file(path, model) as f:
        try:
            yield from _decode(model, f, path, device, batch_size)
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise unreadable(path, exc) from None


@torch.inference_mode()
def _decode(model, f, path, device: torch.device, batch_size: int) -> Iterator[Reconstruction | Failure]:
    offsets = f["offsets"][:]
    sources = list(f.attrs.get("input_files", []))
    for start in range(0, len(offsets) - 1, batch_size):
        stop = min(start + batch_size, len(offsets) - 1)
        z = torch.as_tensor(f["embedding"][start:stop], device=device).to(model.dtype)
        rotation = torch.as_tensor(f["rotation"][start:stop], device=device).double()
        translation = torch.as_tensor(f["translation"][start:stop], device=device).double()
        lo, hi = offsets[start], offsets[stop]
        permutation = f["permutation"][lo:hi]
        numbers = f["atomic_numbers"][lo:hi].astype(np.int64)
        sizes = np.diff(offsets[start : stop + 1])
        n_atoms = torch.as_tensor(sizes, device=device)
        slot_types = torch.zeros(len(sizes), int(sizes.max()), dtype=torch.long, device=device)
        cuts = np.cumsum(sizes)[:-1]
        perms = np.split(permutation, cuts)
        bad = {}  # record in batch -> why it cannot be decoded
        for b, (perm, nums) in enumerate(zip(perms, np.split(numbers, cuts))):
            if not np.array_equal(np.sort(perm), np.arange(len(perm))):
                bad[b] = "its stored permutation is not a permutation of its atoms"
            elif len(perm) > model.config.max_atoms:
                bad[b] = f"{len(perm)} atoms; the model takes at most {model.config.max_atoms}"
            elif not set(nums.tolist()) <= set(model.config.elements):
                bad[b] = "its stored elements are not the model's"
            else:
                slot_types[b, : len(perm)] = torch.as_tensor(type_indices(nums[perm], model.config.elements))
        stored = torch.isfinite(z).all(1) & torch.isfinite(rotation).flatten(1).all(1) & torch.isfinite(translation).all(1)
        for b in np.flatnonzero(~stored.cpu().numpy()):
            bad.setdefault(int(b), "its stored embedding or group element holds NaN or Inf")
        z = torch.where(stored[:, None], z, torch.zeros_like(z))
        y, logits = model.decode(z, n_atoms, slot_types)
        world = y.double() @ rotation.transpose(1, 2) + translation[:, None]
        names = f["name"][start:stop]
        source_files, source_indices = f["source_file"][start:stop], f["source_index"][start:stop]
        for b, perm in enumerate(perms):
            name = names[b].decode() if isinstance(names[b], bytes) else str(names[b])
            source_file = int(source_files[b])
            source = sources[source_file] if 0 <= source_file < len(sources) else str(path)
            if b in bad:
                yield Failure(str(source), int(source_indices[b]), bad[b], name)
                continue
            positions = np.empty((len(perm), 3))
            positions[perm] = world[b, : len(perm)].cpu().numpy()  # slot k goes back to input atom perm[k]
            elements = np.empty(len(perm), dtype=np.int64)
            elements[perm] = _elements(model, logits[b, : len(perm)])
            decoded = Structure(elements, positions, name, str(source), int(source_indices[b]))
            yield finite(Reconstruction(decoded, None, None))


def summarise(rows: Sequence[dict]) -> dict:
    """Figures over all records: their number and, where known, median and mean RMSD (Å) and
    element accuracy over all atoms."""
    summary: dict = {"n_records": len(rows)}
    rmsds = [r["rmsd"] for r in rows if r["rmsd"] is not None]
    if rmsds:
        atoms = sum(r["n_atoms"] for r in rows)
        summary |= {"rmsd_median": float(np.median(rmsds)), "rmsd_mean": float(np.mean(rmsds)),
                    "element_accuracy": sum(r["element_accuracy"] * r["n_atoms"] for r in rows) / atoms}
    return summary


__all__ = ["Reconstruction", "decode_embeddings", "reconstruct", "reconstruct_stream", "summarise"]
