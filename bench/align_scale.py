"""Element-mode alignment at 100 to 10,000 atoms (issue 11, "Scale").

    python bench/align_scale.py [--sizes 100 1000 3000 10000] [--time-limit 120] [--old] [--rev REV]

Structures: a peptide with hydrogens (RDKit `MolFromSequence` + `AddHs`, two ETKDG conformers,
seed 1) stands for a protein. Below ~250 atoms it is the peptide itself; larger structures are
copies of it laid out as a protein-sized blob (centres on a 12 Å grid, each copy turned by its
own seeded rotation), A from the first conformer and B from the second, so every copy differs
from its partner by a conformational change and the copies crowd each other as residues do.
With `--kind frames` (the default) B is A with Gaussian noise of 0.3 Å on every coordinate (two
frames of one structure, about 0.5 Å RMSD); with `--kind conformers` it is built from the second
conformer (several Å apart: a search the known correspondence does not bound well). B is then
turned, shifted and renumbered at random. The reference answer is the known
correspondence (copy k of A onto copy k of B, atom for atom) fitted by Kabsch: the search should
reach it or go below it. `--old` also times the dense search of the 84 starts (before this work)
where it finishes within the time limit; `--rev REV` also runs groupae_cli/align.py as it was at git
revision REV on the same structures, right after the current code (bench/align_speed.py loads it).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem
from scipy.spatial.transform import Rotation

from groupae_cli.align import align, kabsch

#: Peptides whose size (with H) is near the target: 10-residue blocks of a mixed sequence.
SEQUENCE = "GAVLKSTDEF"
#: Gaussian noise on B's coordinates (Å, per coordinate): two frames of one structure.
NOISE = 0.3


def peptide(residues: int, seed: int = 1):
    mol = Chem.AddHs(Chem.MolFromSequence((SEQUENCE * (residues // len(SEQUENCE) + 1))[:residues]))
    params = AllChem.ETKDGv3()
    params.randomSeed, params.useRandomCoords = seed, True
    ids = list(AllChem.EmbedMultipleConfs(mol, 2, params))
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return numbers, mol.GetConformer(ids[0]).GetPositions(), mol.GetConformer(ids[1]).GetPositions()


def structure_pair(atoms: int, seed: int = 0, kind: str = "frames"):
    """(numbers, A, B, known mapping) with about `atoms` atoms, B moved and renumbered."""
    rng = np.random.default_rng(seed)
    if atoms <= 250:
        numbers, a, b = peptide(max(1, round(atoms / 17)))
    else:
        z, pa, pb = peptide(14)  # ~230 atoms
        copies = max(1, round(atoms / len(z)))
        side = int(np.ceil(copies ** (1 / 3)))
        centres = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:copies]) * 12.0
        turns = Rotation.random(copies, rng).as_matrix()
        ca, cb = pa - pa.mean(0), pb - pb.mean(0)
        numbers = np.tile(z, copies)
        a = np.concatenate([ca @ r.T + c for r, c in zip(turns, centres)])
        b = np.concatenate([cb @ r.T + c for r, c in zip(turns, centres)])
    rotation = Rotation.random(1, rng).as_matrix()[0]
    sigma = rng.permutation(len(numbers))
    if kind == "frames":  # the same structure, thermally perturbed
        b = a + rng.normal(scale=NOISE, size=a.shape)
    moved = (b @ rotation.T + rng.normal(scale=10.0, size=3))[sigma]
    known = np.argsort(sigma)  # atom i of A is atom known[i] of moved B
    return numbers, a, moved, numbers[sigma], known


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000, 10000])
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--old", action="store_true", help="also time the dense search of every start")
    parser.add_argument("--kind", choices=["frames", "conformers"], default="frames",
                        help="B: A with 0.3 Å noise (two frames), or from the second conformer (larger changes)")
    parser.add_argument("--rev", default=None, help="also run align.py at this git revision, on the same structures")
    args = parser.parse_args()
    earlier = None
    if args.rev:
        from align_speed import load_revision

        earlier = load_revision(args.rev)
    print("| atoms | time | RMSD | known correspondence | reached | proven optimal | starts refined / scored | "
          "time limit hit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        numbers, a, b, numbers_b, known = structure_pair(size, kind=args.kind)
        rotation, translation = kabsch(a, b[known])
        reference = float(np.sqrt(((a @ rotation.T + translation - b[known]) ** 2).sum(-1).mean()))
        start = time.perf_counter()
        result = align(a, numbers, b, numbers_b, time_limit=args.time_limit)
        seconds = time.perf_counter() - start
        d = result.details
        print(f"| {len(numbers):,} | {seconds:.2f} s | {result.rmsd:.4f} | {reference:.4f} | "
              f"{'yes' if result.rmsd <= reference + 1e-6 else 'no'} | {d.get('proven_optimal')} | "
              f"{d.get('refined_starts', result.starts)} / {result.starts} | {d.get('time_limit_reached', False)} |",
              flush=True)
        if earlier is not None:
            start = time.perf_counter()
            before = earlier.align(a, numbers, b, numbers_b, time_limit=args.time_limit)
            seconds = time.perf_counter() - start
            print(f"|   at {args.rev} | {seconds:.2f} s | {before.rmsd:.4f} | | "
                  f"{'yes' if before.rmsd <= reference + 1e-6 else 'no'} | {before.details.get('proven_optimal')} | "
                  f"{before.details.get('refined_starts', before.starts)} / {before.starts} | "
                  f"{before.details.get('time_limit_reached', False)} |", flush=True)
        if args.old:
            from groupae_cli.align import refine, start_poses

            start = time.perf_counter()
            best = np.inf
            for r, t in start_poses(a, b):
                best = min(best, refine(a, b, numbers, numbers_b, r, t).rmsd)
                if time.perf_counter() - start > args.time_limit:
                    best = None
                    break
            seconds = time.perf_counter() - start
            print(f"|   dense, every start | {seconds:.2f} s{'' if best is not None else ' (stopped)'} | "
                  f"{'-' if best is None else f'{best:.4f}'} | | | | | |", flush=True)


if __name__ == "__main__":
    main()
