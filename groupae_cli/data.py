"""Batches: a dict of tensors for variable-size structures, and the one collate that builds it.

Atoms of all structures are concatenated; `batch` says which structure each atom belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# keys of a batch, with shapes (A = atoms in the batch, B = structures)
POSITIONS = "positions"  # (A, 3) float
TYPES = "types"  # (A,) long, index into the model's element list
BATCH = "batch"  # (A,) long, structure of each atom
N_ATOMS = "n_atoms"  # (B,) long


class UnknownElements(ValueError):
    """A structure holds elements the model was not trained on."""


def type_indices(numbers: np.ndarray, elements: Sequence[int]) -> np.ndarray:
    """Map atomic numbers to indices into `elements`; UnknownElements names the strangers."""
    lookup = np.full(max(max(elements), int(numbers.max())) + 1, -1, dtype=np.int64)
    lookup[list(elements)] = np.arange(len(elements))
    types = lookup[numbers]
    if (types < 0).any():
        from ase.data import chemical_symbols

        strangers = sorted({chemical_symbols[z] if z < len(chemical_symbols) else str(z) for z in numbers[types < 0]})
        raise UnknownElements(f"element{'s' if len(strangers) > 1 else ''} {', '.join(strangers)} unknown to the model")
    return types


def batch_from_arrays(numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], elements: Sequence[int],
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A batch from per-structure atomic numbers (n_i,) and positions (n_i, 3)."""
    sizes = [len(z) for z in numbers]
    return {
        POSITIONS: torch.as_tensor(np.concatenate(positions), dtype=dtype),
        TYPES: torch.as_tensor(type_indices(np.concatenate(numbers).astype(np.int64), elements)),
        BATCH: torch.repeat_interleave(torch.arange(len(sizes)), torch.as_tensor(sizes)),
        N_ATOMS: torch.as_tensor(sizes, dtype=torch.long),
    }


def collate(structures: Sequence, elements: Sequence[int], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A batch from structures (anything with `.numbers` and `.positions`)."""
    return batch_from_arrays([s.numbers for s in structures], [s.positions for s in structures], elements, dtype)


def centred_batch(structures: Sequence, elements: Sequence[int],
                  dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """`collate` of the structures each moved to its centroid, and those centroids (B, 3) float64.

    The centring is done in float64, before the cast to `dtype`: a structure far from the origin
    (1e4 Å) keeps its shape's precision in float32, so z and the canonical order stay what they are
    at the origin. The model is translation-equivariant: add the centroids back to what it reports
    in the input's frame (the translation, the reconstruction).
    """
    sizes = np.array([len(s.numbers) for s in structures])
    positions = np.concatenate([np.asarray(s.positions, dtype=np.float64) for s in structures])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    origins = np.add.reduceat(positions, starts, axis=0) / sizes[:, None]  # one pass over the batch
    centred = positions - np.repeat(origins, sizes, axis=0)
    batch = batch_from_arrays([s.numbers for s in structures], np.split(centred, starts[1:]), elements, dtype)
    return batch, origins


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
