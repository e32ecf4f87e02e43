"""Training data: inputs parsed once into a cache, a fixed split by molecule, batches.

The cache (`cache.npz` in the run directory) holds every usable record as flat arrays; a resumed
run reads it instead of the inputs. The split keeps conformers of one molecule together: records
are grouped by name with a `_conf<k>` suffix removed, and whole groups go to validation.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from groupae_cli.data import batch_from_arrays

_CONFORMER = re.compile(r"(_conf(ormer)?_?\d+)$", re.IGNORECASE)


@dataclass
class StructureSet:
    numbers: np.ndarray  # (A,) int16
    positions: np.ndarray  # (A, 3) float64
    offsets: np.ndarray  # (N + 1,) int64
    names: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_structures(cls, structures: Sequence) -> StructureSet:
        sizes = [len(s) for s in structures]
        return cls(
            numbers=np.concatenate([s.numbers for s in structures]).astype(np.int16),
            positions=np.concatenate([s.positions for s in structures]),
            offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            names=np.array([s.name for s in structures]),
        )

    def save(self, path: str | Path) -> None:
        """Write atomically: a full disk or a kill never leaves a truncated cache."""
        from groupae_cli.io.formats import written_atomically

        with written_atomically(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no ".npz"
            np.savez(f, numbers=self.numbers, positions=self.positions, offsets=self.offsets, names=self.names)

    @classmethod
    def load(cls, path: str | Path) -> StructureSet:
        with np.load(path, allow_pickle=False) as f:
            return cls(f["numbers"], f["positions"], f["offsets"], f["names"])

    def elements(self) -> list[int]:
        return sorted(int(z) for z in np.unique(self.numbers))

    def molecule_names(self) -> list[str]:
        """Each record's molecule: its name without a `_conf<k>` suffix."""
        return [_CONFORMER.sub("", str(n)) for n in self.names]

    def groups(self) -> np.ndarray:
        """A molecule id per record: conformers of one molecule share it."""
        _, ids = np.unique(self.molecule_names(), return_inverse=True)
        return ids

    def split(self, val_fraction: float, seed: int, by: str = "random") -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) record indices; whole molecules go to one side.

        `by="random"`: round(val_fraction x molecules) drawn with `seed`. `by="name"`: a molecule is
        held out when the hash of (seed, its name) falls below val_fraction, whatever else the inputs
        hold, so its side never changes as the data set grows (about val_fraction of the molecules).
        """
        names, groups = np.unique(self.molecule_names(), return_inverse=True)  # as groups(), the names beside
        unique = np.unique(groups)
        if by == "name":
            fractions = np.array([_hashed_fraction(seed, n) for n in names])
            is_val_group = fractions < val_fraction
            if val_fraction > 0 and len(unique) > 1:  # as "random": one molecule at least on each side
                is_val_group[np.argmin(fractions)] = True
                is_val_group[np.argmax(fractions)] = False
            is_val = is_val_group[groups]
            return np.flatnonzero(~is_val), np.flatnonzero(is_val)
        if by != "random":
            raise ValueError(f"split by 'random' or 'name', not {by!r}")
        rng = np.random.default_rng(seed)
        n_val = round(val_fraction * len(unique))
        if val_fraction > 0:  # one molecule alone is trained on, not held out
            n_val = max(min(1, len(unique) - 1), min(n_val, len(unique) - 1))
        val_groups = rng.choice(unique, size=n_val, replace=False) if n_val else np.array([], dtype=groups.dtype)
        is_val = np.isin(groups, val_groups)
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)

    def batch(self, indices: Sequence[int], elements: Sequence[int], dtype=torch.float32) -> dict[str, torch.Tensor]:
        """Collate records into a batch dict (see groupae_cli.data)."""
        spans = [slice(self.offsets[i], self.offsets[i + 1]) for i in indices]
        return batch_from_arrays([self.numbers[s] for s in spans], [self.positions[s] for s in spans], elements, dtype)


def _hashed_fraction(seed: int, name: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, name): BLAKE2b, the same on every machine and run."""
    digest = hashlib.blake2b(f"{seed}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def epoch_batches(indices: np.ndarray, sizes: np.ndarray, batch_size: int, seed: int, epoch: int,
                  max_atoms: int | None = None, epoch_size: int = 0) -> list[np.ndarray]:
    """A shuffled list of index batches, the same on every process (seeded by seed and epoch).

    With `max_atoms`, records larger than it sit this epoch out (the curriculum). With `epoch_size`
    (smaller than the pool), epoch e is the (e mod k)-th slice of pass e // k over the shuffled pool,
    k = the slices per pass: every record is used once before any is used twice.
    """
    pool = indices if max_atoms is None else indices[sizes[indices] <= max_atoms]
    if 0 < epoch_size < len(pool):
        per_pass = len(pool) // epoch_size
        pass_, part = divmod(epoch, per_pass)
        pool = np.random.default_rng([seed, pass_, 1]).permutation(pool)[part * epoch_size : (part + 1) * epoch_size]
    pool = np.random.default_rng([seed, epoch]).permutation(pool)
    return [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]


def fixed_batches(indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(indices), batch_size):
        yield indices[i : i + batch_size]


class Batches(Sequence):
    """Index batches collated on access, so an epoch's batches are built one at a time."""

    def __init__(self, data: StructureSet, index_batches: Sequence[np.ndarray], elements: Sequence[int]):
        self.data, self.index_batches, self.elements = data, list(index_batches), elements

    def __len__(self) -> int:
        return len(self.index_batches)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return Batches(self.data, self.index_batches[item], self.elements)
        return self.data.batch(self.index_batches[item], self.elements)
