"""What a structure file holds, for `groupae info`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np

from groupae_cli.errors import Failure
from groupae_cli.io.records import Structure


def summarise(items: Iterable[Structure | Failure], on_failure: Callable[[Failure], None] | None = None) -> dict:
    """Record count, atoms per record, elements, bonds and failures of a stream of records.

    Memory grows only by one integer per record (for the median).
    """
    from ase.data import chemical_symbols

    sizes: list[int] = []
    elements: Counter[int] = Counter()
    with_bonds = 0
    with_features: set[str] = set()
    failures: list[dict] = []
    for item in items:
        if isinstance(item, Failure):
            failures.append({"index": item.index, "name": item.name, "reason": item.reason})
            if on_failure is not None:
                on_failure(item)
            continue
        sizes.append(len(item))
        values, counts = np.unique(item.numbers, return_counts=True)
        elements.update(dict(zip(values.tolist(), counts.tolist())))
        with_bonds += item.has_bonds
        with_features.update(item.feature_names)
    atoms = np.array(sizes, dtype=np.int64)
    return {
        "records": len(sizes),
        "failed": len(failures),
        "atoms_per_record": (
            {"min": int(atoms.min()), "median": float(np.median(atoms)), "max": int(atoms.max()), "total": int(atoms.sum())}
            if len(atoms) else None
        ),
        "elements": {chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z): n for z, n in sorted(elements.items())},
        "records_with_bonds": with_bonds,
        "point_features": sorted(with_features),
        "failures": failures,
    }
