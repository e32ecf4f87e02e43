"""The one record type every reader yields, and the checks every record passes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from groupae_cli.errors import Failure

#: Atomic number given to the points of a plain point cloud (ase's dummy element "X").
POINT_TYPE = 0
#: Largest atomic number (oganesson).
MAX_ATOMIC_NUMBER = 118
#: Largest accepted absolute coordinate, in Å (or the point cloud's unit).
MAX_ABS_COORDINATE = 1e6
#: Two atoms closer than this (Å) are taken to coincide.
MIN_DISTANCE = 1e-3


class _Skipped:
    """What a reader yields in place of a record its `wanted` rejects (see `read_structures`)."""

    def __repr__(self) -> str:
        return "SKIPPED"


#: A record cut from the file but not parsed: it keeps its place (its index) and costs no parsing.
SKIPPED = _Skipped()


@dataclass
class Structure:
    """One structure: a molecule or a point cloud.

    numbers:   (n,) int64 — atomic numbers; POINT_TYPE (0) for untyped points
    positions: (n, 3) float64 — Å
    name:      the record's title, or "<file stem>:<index>" when it has none
    source:    the file it came from ("-" for stdin)
    index:     0-based record index in that file
    bonds:     (m, 2) int64 atom index pairs, or None when the format has no bonds
    bond_orders: (m,) float64, 1 / 1.5 (aromatic) / 2 / 3, present with bonds
    charges:   (n,) int64 formal charges (SDF), or None
    features:  (n, f) float64 per-point features (extra PLY vertex properties), or None
    feature_names: names of the feature columns
    properties: name -> text written with the structure as SD properties (SDF output only)
    """

    numbers: np.ndarray
    positions: np.ndarray
    name: str
    source: str
    index: int
    bonds: np.ndarray | None = None
    bond_orders: np.ndarray | None = None
    charges: np.ndarray | None = None
    features: np.ndarray | None = None
    feature_names: tuple[str, ...] = field(default=())
    properties: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def has_bonds(self) -> bool:
        return self.bonds is not None


def check(structure: Structure) -> str | None:
    """The reason this structure cannot be used, or None when it is fine.

    Every reader applies this, so no command ever sees a record with fewer than two atoms, a
    non-finite or absurd coordinate, or two atoms in the same place.
    """
    n = len(structure)
    if n < 2:
        why = " (a single atom has no orientation to align or encode)" if n == 1 else ""
        return f"{n} atom{'s' if n != 1 else ''}: a structure needs at least 2{why}"
    numbers = structure.numbers
    if numbers.min() < POINT_TYPE or numbers.max() > MAX_ATOMIC_NUMBER:
        atom = int(np.flatnonzero((numbers < POINT_TYPE) | (numbers > MAX_ATOMIC_NUMBER))[0])
        return f"atomic number {int(numbers[atom])} at atom {atom} is not an element (1-{MAX_ATOMIC_NUMBER}, 0 a point)"
    pos = structure.positions
    finite = np.isfinite(pos)
    if not finite.all():
        atom = int(np.argwhere(~finite)[0, 0])
        return f"non-finite coordinate ({pos[atom].tolist()}) at atom {atom}"
    biggest = float(np.abs(pos).max())
    if biggest > MAX_ABS_COORDINATE:
        return f"absurd coordinate {biggest:.3g} (limit {MAX_ABS_COORDINATE:.0e})"
    pair = _coinciding(pos)
    if pair is not None:
        return f"atoms {pair[0]} and {pair[1]} coincide (closer than {MIN_DISTANCE} Å)"
    return None


def _coinciding(pos: np.ndarray) -> tuple[int, int] | None:
    """Two atoms closer than MIN_DISTANCE (the pair with the smallest first index), or None.

    Up to a few thousand atoms a blocked all-pairs check in numpy; beyond, scipy's k-d tree
    (imported only then: importing scipy.spatial costs a quarter of a second at start-up)."""
    n = len(pos)
    if n > 4096:
        from scipy.spatial import cKDTree

        pairs = cKDTree(pos).query_pairs(MIN_DISTANCE, output_type="ndarray")
        if not len(pairs):
            return None
        pairs = np.sort(pairs, axis=1)
        i, j = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))[0]]
        return int(i), int(j)
    x, y, z = pos.T  # per axis: (n, n) differences, several times faster than (n, n, 3) ones
    for start in range(0, n, 512):
        rows = slice(start, start + 512)
        d2 = np.subtract.outer(x[rows], x) ** 2
        d2 += np.subtract.outer(y[rows], y) ** 2
        d2 += np.subtract.outer(z[rows], z) ** 2
        close = d2 < MIN_DISTANCE**2
        if np.count_nonzero(close) == len(d2):  # each atom with itself alone: the usual case
            continue
        rows_at, cols = np.nonzero(close)
        keep = cols > rows_at + start
        if keep.any():
            return int(rows_at[keep][0] + start), int(cols[keep][0])
    return None


def checked(structure: Structure) -> Structure | Failure:
    """The structure itself, or the failure that replaces it."""
    reason = check(structure)
    if reason is None:
        return structure
    return Failure(structure.source, structure.index, reason, structure.name)
