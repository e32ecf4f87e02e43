"""Element-mode start sets compared: 60 evenly spread rotations against random draws.

    python bench/align_starts.py

`groupae align --match elements` refines from the 24 principal-axis matches and 60 evenly spread
rotations between the two principal frames (the icosahedral group). This asks whether the spread
set is better than uniform random rotations in its place (48, the earlier default, and 60, the
same count) over several seeds. Pairs:
- the 72 pairs of bench/align.py (sample conformers and the symmetric set);
- "hard": three ETKDG + MMFF conformers (seed 3) of each molecule in HARD below, all three pairs.
  The molecules were chosen for rings, chains and near-degenerate principal axes.
The reference optimum is the best of two searches of 300 random starts each (seeds 11 and 12)
on top of the default starts. A pair counts as found when it is within 1e-3 Å of the reference.
"""

from __future__ import annotations

import importlib
import time

import numpy as np
from align import sample_pairs, symmetric_pairs
from rdkit import Chem
from rdkit.Chem import AllChem

# the module, not the package's `align` function of the same name (groupae_cli's public API)
alignment = importlib.import_module("groupae_cli.align")

HARD = {
    "adamantane": "C1C2CC3CC1CC(C2)C3", "cyclohexane": "C1CCCCC1", "cyclooctane": "C1CCCCCCC1",
    "tetraphenylmethane": "c1ccc(cc1)C(c1ccccc1)(c1ccccc1)c1ccccc1", "18-crown-6": "C1COCCOCCOCCOCCOCCO1",
    "triphenylphosphine": "c1ccc(cc1)P(c1ccccc1)c1ccccc1", "pentaerythritol": "OCC(CO)(CO)CO",
    "tetramethylsilane": "C[Si](C)(C)C", "mesitylene": "Cc1cc(C)cc(C)c1", "cyclododecane": "C1CCCCCCCCCCC1",
    "hexaethylbenzene": "CCc1c(CC)c(CC)c(CC)c(CC)c1CC", "tri-tert-butylmethane": "CC(C)(C)C(C(C)(C)C)C(C)(C)C",
    "dodecane": "CCCCCCCCCCCC", "cholesterol": "CC(C)CCCC(C)C1CCC2C1(CCC3C2CC=C4C3(CCC(C4)O)C)C",
    "triptycene": "c1ccc2c(c1)C1c3ccccc3C2c2ccccc12", "biphenyl": "c1ccc(cc1)c1ccccc1",
    "naphthalene": "c1ccc2ccccc2c1", "tetrahydrofuran": "C1CCOC1", "glucose": "OCC1OC(O)C(O)C(O)C1O",
    "decalin": "C1CCC2CCCCC2C1",
}


def hard_pairs():
    for name, smiles in HARD.items():
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        ids = list(AllChem.EmbedMultipleConfs(mol, 3, randomSeed=3))
        AllChem.MMFFOptimizeMoleculeConfs(mol)
        numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
        positions = [mol.GetConformer(i).GetPositions() for i in ids]
        for i, j in ((0, 1), (0, 2), (1, 2)):
            yield name, numbers, positions[i], positions[j]


def main() -> None:
    sets = {"bench/align.py": [(n, a.numbers, a.positions, b.positions)
                               for _, n, a, b, _, _ in [*sample_pairs(), *symmetric_pairs()]],
            "hard": list(hard_pairs())}
    spread_starts = alignment.start_rotations

    def random_starts(a, b, extra=0, seed=0, orders=False, spread=False):
        return spread_starts(a, b, extra, seed, orders, spread=False)

    print("| start set | seeds | " + " | ".join(f"{name} ({len(p)} pairs): found" for name, p in sets.items())
          + " | ms per pair (all) |")
    print("| --- | --- | " + " | ".join("---" for _ in sets) + " | --- |")
    references = {name: np.array([min(alignment.align(pa, z, pb, z, extra_starts=300, seed=s).rmsd for s in (11, 12))
                                  for _, z, pa, pb in pairs]) for name, pairs in sets.items()}
    variants = [("24 axis + 60 spread (default)", spread_starts, 0, [0]),
                ("24 axis + 48 random", random_starts, 48, [0, 1, 2, 3]),
                ("24 axis + 60 random", random_starts, 60, [0, 1, 2, 3])]
    for label, starts, extra, seeds in variants:
        alignment.start_rotations = starts
        found, seconds, count = {name: [] for name in sets}, 0.0, 0
        for seed in seeds:
            for name, pairs in sets.items():
                begin = time.perf_counter()
                got = np.array([alignment.align(pa, z, pb, z, extra_starts=extra, seed=seed).rmsd
                                for _, z, pa, pb in pairs])
                seconds, count = seconds + time.perf_counter() - begin, count + len(pairs)
                found[name].append(int((got <= references[name] + 1e-3).sum()))
        alignment.start_rotations = spread_starts
        cells = [f"{min(v)}–{max(v)}" if min(v) != max(v) else str(v[0]) for v in found.values()]
        print(f"| {label} | {len(seeds)} | " + " | ".join(cells) + f" | {1e3 * seconds / count:.1f} |", flush=True)


if __name__ == "__main__":
    main()
