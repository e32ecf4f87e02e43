"""`groupae align` as a user runs it: whole-process wall time (issue 11).

    python bench/align_cli.py [--calls 100] [--json bench/align_cli.json]

(a) Start-up: `groupae align a.sdf b.sdf`, process start to exit, on 20 sample pairs:
    sample_data/align/{a,b}.sdf and conformers 0 and 1 of the first 19 three-conformer molecules
    of sample_data/molecules.sdf (each record in its own SDF file), without a model (the default)
    and with `--model default` (the learned guess first). Also the XYZ pair of sample_data/align
    in element mode (5 runs).
(b) Many structures: `--calls` ETKDG conformers (seed 1) of ibuprofen onto one reference conformer
    (seed 2) in one call, against one call per conformer; the RMSDs of the two ways must agree.
Each process is the installed `groupae` console script beside this Python.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

ROOT = Path(__file__).resolve().parent.parent
GROUPAE = shutil.which("groupae", path=str(Path(sys.executable).parent)) or "groupae"
ENSEMBLE_SMILES = "CC(C)Cc1ccc(cc1)C(C)C(=O)O"  # ibuprofen, 33 atoms with H


def timed_call(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([GROUPAE, "align", *args], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"groupae align {' '.join(args)} failed: {done.stderr.strip()}")
    return elapsed, done.stdout


def sample_pairs(folder: Path) -> list[tuple[Path, Path]]:
    pairs = [(ROOT / "sample_data" / "align" / "a.sdf", ROOT / "sample_data" / "align" / "b.sdf")]
    mols = [m for m in Chem.SDMolSupplier(str(ROOT / "sample_data" / "molecules.sdf"), removeHs=False)
            if m is not None and "_conf" in m.GetProp("_Name")]
    for k in range(0, 3 * 19, 3):
        files = []
        for m in mols[k : k + 2]:
            path = folder / f"{m.GetProp('_Name')}.sdf"
            with Chem.SDWriter(str(path)) as writer:
                writer.write(m)
            files.append(path)
        pairs.append((files[0], files[1]))
    return pairs


def write_conformers(path: Path, count: int, seed: int) -> list[Path]:
    mol = Chem.AddHs(Chem.MolFromSmiles(ENSEMBLE_SMILES))
    ids = list(AllChem.EmbedMultipleConfs(mol, count, randomSeed=seed))
    singles = []
    with Chem.SDWriter(str(path)) as writer:
        for k in ids:
            mol.SetProp("_Name", f"ibuprofen_seed{seed}_conf{k}")
            writer.write(mol, confId=k)
            single = path.parent / f"{path.stem}_{k}.sdf"
            with Chem.SDWriter(str(single)) as one:
                one.write(mol, confId=k)
            singles.append(single)
    return singles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="conformers in the ensemble (b)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    figures: dict = {"groupae": GROUPAE}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pairs = sample_pairs(folder)
        plain = [timed_call(str(a), str(b))[0] for a, b in pairs]
        learned = [timed_call(str(a), str(b), "--model", "default")[0] for a, b in pairs]
        xyz = [timed_call(str(ROOT / "sample_data" / "align" / "a.xyz"), str(ROOT / "sample_data" / "align" / "b.xyz"))[0]
               for _ in range(5)]
        figures["startup"] = {"pairs": len(pairs), "plain_s": plain, "model_s": learned, "xyz_s": xyz}

        singles = write_conformers(folder / "ensemble.sdf", args.calls, seed=1)
        write_conformers(folder / "reference.sdf", 1, seed=2)
        reference = str(folder / "reference.sdf")
        one_call, out = timed_call(str(folder / "ensemble.sdf"), reference, "--json")
        together = [json.loads(line)["rmsd"] for line in out.splitlines()]
        start = time.perf_counter()
        apart = [json.loads(timed_call(str(s), reference, "--json")[1])["rmsd"] for s in singles]
        many_calls = time.perf_counter() - start
        agree = len(together) == len(apart) and bool(np.allclose(together, apart, atol=1e-9))
        figures["ensemble"] = {"conformers": len(singles), "atoms": Chem.AddHs(Chem.MolFromSmiles(ENSEMBLE_SMILES)).GetNumAtoms(),
                               "one_call_s": one_call, "separate_calls_s": many_calls, "rmsd_agree": agree}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")

    s, e = figures["startup"], figures["ensemble"]
    print(f"groupae: {GROUPAE}\n")
    print("| figure | value |")
    print("| --- | --- |")
    print(f"| `groupae align a.sdf b.sdf`, whole process, median over {s['pairs']} pairs (min-max) | "
          f"{np.median(s['plain_s']):.2f} s ({min(s['plain_s']):.2f}-{max(s['plain_s']):.2f}) |")
    print(f"| the same with `--model default` (the learned guess first) | "
          f"{np.median(s['model_s']):.2f} s ({min(s['model_s']):.2f}-{max(s['model_s']):.2f}) |")
    print(f"| `groupae align a.xyz b.xyz` (element mode, plain XYZ), median of 5 | "
          f"{np.median(s['xyz_s']):.2f} s |")
    print(f"| {e['conformers']} conformers of ibuprofen ({e['atoms']} atoms) onto a reference: one call | "
          f"{e['one_call_s']:.2f} s |")
    print(f"| the same as {e['conformers']} calls | {e['separate_calls_s']:.1f} s |")
    print(f"| speed-up, one call against separate calls | {e['separate_calls_s'] / e['one_call_s']:.1f}x |")
    print(f"| RMSDs of the two ways agree (1e-9 Å) | {'yes' if e['rmsd_agree'] else 'NO'} |")


if __name__ == "__main__":
    main()
