"""Build the training data of groupae's default molecule model (DESIGN.md section 5).

Three gzip'ed SDF files, all hydrogens explicit, 3D coordinates in Å, byte-identical on every run:

* ``qm9.sdf.gz``       all 130,831 QM9 molecules (B3LYP/6-31G(2df,p) geometries), read straight from
                       the CSVs of the PyPI package ``qm9pack`` (never imported: its ``__init__`` needs
                       ``pkg_resources``). Titles ``qm9_<QM9 index>``; bonds by RDKit's DetermineBonds,
                       else its Hueckel variant, else connectivity only, else none (property ``bonds``).
* ``druglike.sdf.gz``  rdkit's ``Data/NCI/first_5K.smi``: largest fragment, elements H B C N O F P S Cl
                       Br I, 5-45 heavy atoms, first of each canonical SMILES; ETKDGv3 conformers (fixed
                       seed, pruned at 0.5 Å), MMFF94-optimised, lowest energy first, titles
                       ``NCI_<id>_conf<k>``; then rdkit's ``Contrib/PBF/testData/egfr.sdf`` (``egfr_<k>``).
* ``sise.sdf.gz``      silicon and selenium: the NCI molecules with them, and the drug-like ones rewritten
                       as TMS ethers, trimethylsilyl groups and selenides (REWRITES below); 2 conformers,
                       MMFF94 or UFF where MMFF94 lacks selenium. Titles ``NCI_<id>[_<rewrite>]_conf<k>``.

Usage (from the repository root):
    python recipes/default_model/make_data.py [--out data/default_model] [--qm9-limit N]
        [--conformers 3] [--seed 20240607] [--workers 2] [--only qm9|druglike|sise]
"""

import argparse
import collections
import csv
import gzip
import importlib.util
import io
import itertools
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import rdkit
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem, rdDetermineBonds, rdDistGeom, rdMolAlign

RDKIT_DIR = Path(os.path.dirname(rdkit.__file__))
NCI_SMI = RDKIT_DIR / "Data" / "NCI" / "first_5K.smi"
EGFR_SDF = RDKIT_DIR / "Contrib" / "PBF" / "testData" / "egfr.sdf"
QM9_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
ELEMENTS = {"H", "B", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I"}
HEAVY_MIN, HEAVY_MAX = 5, 45
PRUNE_RMS = 0.5     # Å, heavy-atom RMSD (symmetry-aware) below which two conformers are one
MIN_DISTANCE = 0.5  # Å, two atoms closer than this make a geometry insane


class Output:
    """An SDF writer into ``<name>.sdf.gz`` (gzip header without time stamp) with a tally."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".part")
        self.raw = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, mtime=0)
        self.text = io.TextIOWrapper(self.gz, encoding="utf-8", newline="\n")
        self.writer = Chem.SDWriter(self.text)
        self.skipped, self.notes, self.elements = collections.Counter(), collections.Counter(), collections.Counter()
        self.sizes = []

    def write(self, mol, conf_id=-1):
        self.writer.write(mol, confId=conf_id)
        self.elements.update(a.GetSymbol() for a in mol.GetAtoms())
        self.sizes.append(mol.GetNumAtoms())

    def close(self, seconds: float):
        self.writer.close()
        self.text.close()
        self.raw.close()
        os.replace(self.tmp, self.path)
        print(f"\n{self.path}: {len(self.sizes)} records in {seconds:.1f} s")
        for why, n in sorted(self.skipped.items()):
            print(f"  skipped {n:6d}  {why}")
        for what, n in sorted(self.notes.items()):
            print(f"  {what}: {n}")
        print("  elements (atoms): " + ", ".join(f"{e} {n}" for e, n in self.elements.most_common()))
        if self.sizes:
            print(f"  atoms per record: min {min(self.sizes)}, median {np.median(self.sizes):g}, "
                  f"max {max(self.sizes)}")


# --------------------------------------------------------------------------- QM9
def qm9_rows():
    """(index, SMILES, elements, flat coordinates, atom count) of qm9pack's CSV rows, in order.

    A row holds Python-literal strings: Elements "['C','H',...]" and XYZ_Ang "[[x,y,z],...]".
    """
    spec = importlib.util.find_spec("qm9pack")  # locates the package without running its __init__
    if spec is None:
        sys.exit("qm9pack is not installed: pip install qm9pack")
    data = Path(spec.submodule_search_locations[0]) / "data"
    csv.field_size_limit(1 << 30)
    for part in QM9_PARTS:
        with open(data / part, newline="") as fh:
            for row in csv.DictReader(fh):
                elements = row["Elements"].strip("[]").replace("'", "").split(",")
                xyz = np.array(row["XYZ_Ang"].replace("[", "").replace("]", "").split(","), float)
                yield int(row["Index"]), row["SMILES"], elements, xyz, int(row["N_atoms"])


def sane(xyz):
    """None if the geometry can be used, else why not."""
    if len(xyz) < 2:
        return "fewer than 2 atoms"
    if not np.isfinite(xyz).all() or np.abs(xyz).max() > 1e3:
        return "non-finite or absurd coordinate"
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)[np.triu_indices(len(xyz), 1)]
    return f"two atoms closer than {MIN_DISTANCE} Å" if d.min() < MIN_DISTANCE else None


def quiet_stderr(call, *args, **kwargs):
    """Run `call` with file descriptor 2 sent to /dev/null (YAeHMOP prints warnings there)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        return call(*args, **kwargs)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def qm9_mol(elements, xyz):
    """An RDKit molecule with bonds perceived as well as RDKit manages, and how it was done."""
    lines = (f"{e} {x:.10f} {y:.10f} {z:.10f}" for e, (x, y, z) in zip(elements, xyz.tolist()))
    bare = Chem.MolFromXYZBlock(f"{len(elements)}\n\n" + "\n".join(lines) + "\n")
    if bare is None:
        return None, "XYZ block not parsed"
    attempts = (("DetermineBonds", lambda m: rdDetermineBonds.DetermineBonds(m, charge=0)),
                ("DetermineBonds(Hueckel)", lambda m: quiet_stderr(
                    rdDetermineBonds.DetermineBonds, m, charge=0, useHueckel=True)),
                ("DetermineConnectivity", rdDetermineBonds.DetermineConnectivity))
    for method, perceive in attempts:
        mol = Chem.Mol(bare)
        try:
            perceive(mol)
            Chem.MolToMolBlock(mol)  # the molecule must also be writable
            return mol, method
        except Exception:  # noqa: BLE001, S112 - ValueError (no valid bond orders, bad valence), RuntimeError, ...
            continue
    return bare, "none"


def make_qm9(out_dir, limit):
    start, out = time.time(), Output(out_dir / "qm9.sdf.gz")
    for index, smiles, elements, xyz, n_atoms in itertools.islice(qm9_rows(), limit):
        if len(elements) != n_atoms or xyz.size != 3 * n_atoms:
            out.skipped["malformed row (atom counts disagree)"] += 1
            continue
        xyz = xyz.reshape(-1, 3)
        why = sane(xyz)
        if why:
            out.skipped[why] += 1
            continue
        mol, method = qm9_mol(elements, xyz)
        if mol is None:
            out.skipped[method] += 1
            continue
        mol.SetProp("_Name", f"qm9_{index}")
        mol.SetProp("qm9_smiles", smiles)
        mol.SetProp("bonds", method)
        out.notes[f"bonds by {method}"] += 1
        out.write(mol)
    out.close(time.time() - start)


# --------------------------------------------------------------------------- drug-like
def nci_candidates(elements=ELEMENTS):
    """(nci_id, mol) of the NCI SMILES that pass the filters, in file order; and skip reasons."""
    seen, picked, skipped = set(), [], collections.Counter()
    for line in NCI_SMI.read_text().splitlines():
        smiles, nci_id = line.split()[:2]
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            skipped["SMILES not parsed"] += 1
            continue
        mol = max(Chem.GetMolFrags(mol, asMols=True), key=lambda m: m.GetNumHeavyAtoms())
        canonical = Chem.MolToSmiles(mol)
        if any(a.GetSymbol() not in elements for a in mol.GetAtoms()):
            skipped[f"element outside {' '.join(sorted(elements, key=Chem.GetPeriodicTable().GetAtomicNumber))}"] += 1
        elif not HEAVY_MIN <= mol.GetNumHeavyAtoms() <= HEAVY_MAX:
            skipped[f"heavy atoms outside {HEAVY_MIN}-{HEAVY_MAX}"] += 1
        elif canonical in seen:
            skipped["same canonical SMILES as an earlier NCI record"] += 1
        else:
            seen.add(canonical)
            picked.append((nci_id, mol))
    return picked, skipped


def conformers(job):
    """(nci_id, mol with Hs, conformer ids lowest force-field energy first) or (nci_id, None, why).

    MMFF94; with `uff` in the job, UFF for molecules MMFF94 has no parameters for (selenium)."""
    (nci_id, mol), n_confs, seed, *uff = job
    mol = Chem.AddHs(mol)
    if AllChem.MMFFHasAllMoleculeParams(mol):
        optimise = AllChem.MMFFOptimizeMoleculeConfs
    elif uff and uff[0] and AllChem.UFFHasAllMoleculeParams(mol):
        optimise = AllChem.UFFOptimizeMoleculeConfs
    else:
        return nci_id, None, "no MMFF94 parameters" + (" nor UFF ones" if uff and uff[0] else "")
    params = rdDistGeom.ETKDGv3()
    params.randomSeed, params.pruneRmsThresh, params.numThreads = seed, PRUNE_RMS, 1
    ids = list(rdDistGeom.EmbedMultipleConfs(mol, numConfs=n_confs, params=params))
    if not ids:
        return nci_id, None, "ETKDG embedding failed"
    energies = [e for _, e in optimise(mol, numThreads=1, maxIters=2000)]
    heavy, kept = Chem.RemoveHs(mol), []
    for cid in sorted(ids, key=lambda c: energies[ids.index(c)]):
        # the optimisation may bring two conformers to one minimum: keep the lower-energy one
        if all(rdMolAlign.GetBestRMS(heavy, heavy, cid, k, maxMatches=10000) >= PRUNE_RMS for k in kept):
            kept.append(cid)
    return nci_id, mol, kept


def make_druglike(out_dir, n_confs, seed, workers):
    start, out = time.time(), Output(out_dir / "druglike.sdf.gz")
    picked, out.skipped = nci_candidates()
    jobs = [(item, n_confs, seed) for item in picked]
    with multiprocessing.Pool(workers, initializer=RDLogger.DisableLog, initargs=("rdApp.*",)) as pool:
        for nci_id, mol, kept in pool.imap(conformers, jobs, chunksize=4):
            if mol is None:
                out.skipped[kept] += 1
                continue
            out.notes[f"NCI molecules with {len(kept)} conformer(s)"] += 1
            for k, cid in enumerate(kept):
                mol.SetProp("_Name", f"NCI_{nci_id}_conf{k}")
                out.write(mol, cid)
    for k, mol in enumerate(Chem.SDMolSupplier(str(EGFR_SDF), removeHs=False)):
        if mol is None:
            out.skipped["egfr.sdf record not parsed"] += 1
            continue
        source_id = mol.GetProp("_Name")
        mol = Chem.AddHs(mol, addCoords=True)
        mol.SetProp("_Name", f"egfr_{k}")
        mol.SetProp("source_id", source_id)
        out.notes["egfr.sdf records"] += 1
        out.write(mol)
    out.close(time.time() - start)


# --------------------------------------------------------------------------- silicon and selenium
# The NCI file holds 7 organosilicon and 4 organoselenium molecules: too few to learn the two elements
# from. Real files have them mostly as trimethylsilyl groups (TMS ethers from GC-MS derivatisation,
# TMS-protected alkynes and amines) and as selenides and selenophenes; so the drug-like molecules are
# also rewritten that way, each rewrite a new molecule with its own conformers:
#   tms_ether  an alcohol or phenol OH silylated:           [OH]-C   ->  O-Si(CH3)3
#   silyl      a tert-butyl's central carbon made silicon:  C(CH3)3  ->  Si(CH3)3
#   selenide   every divalent sulfur between carbons, thiophenes included, made selenium.
REWRITES = {
    "tms_ether": "[OX2H1:1]-[#6:2]>>[#6:2]-[O:1]-[Si](-[CH3])(-[CH3])-[CH3]",
    "silyl": "[CX4H0:1](-[CH3:2])(-[CH3:3])(-[CH3:4])-[!#1:5]>>[Si:1](-[CH3:2])(-[CH3:3])(-[CH3:4])-[*:5]",
    "selenide": "[#16X2:1](~[#6:2])~[#6:3]>>[#34:1](~[#6:2])~[#6:3]",
}
SISE_PER_REWRITE = 600  # molecules per rewrite at most: every k-th of the candidates, in file order


def rewritten(picked):
    """(name, mol) of the rewrites of the picked NCI molecules, every site of a molecule at once."""
    from rdkit.Chem import rdChemReactions

    out, notes = [], collections.Counter()
    for tag, smarts in REWRITES.items():
        rxn = rdChemReactions.ReactionFromSmarts(smarts)
        pattern = rxn.GetReactantTemplate(0)
        hits = [(nci_id, mol) for nci_id, mol in picked if mol.HasSubstructMatch(pattern)]
        step = max(1, -(-len(hits) // SISE_PER_REWRITE))
        for nci_id, mol in hits[::step]:
            new = mol
            for _ in range(len(mol.GetSubstructMatches(pattern))):  # one site per pass, until none is left
                products = rxn.RunReactants((new,))
                if not products:
                    break
                new = products[0][0]
            try:
                Chem.SanitizeMol(new)
                new = Chem.MolFromSmiles(Chem.MolToSmiles(new))
            except Exception:  # noqa: BLE001 - a rewrite RDKit cannot sanitise is skipped and counted
                new = None
            if new is None or new.HasSubstructMatch(pattern):
                notes[f"{tag}: rewrite not sanitised"] += 1
                continue
            out.append((f"NCI_{nci_id}_{tag}", new))
            notes[f"{tag}: molecules"] += 1
    return out, notes


def make_sise(out_dir, n_confs, seed, workers):
    start, out = time.time(), Output(out_dir / "sise.sdf.gz")
    native, _ = nci_candidates(ELEMENTS | {"Si", "Se"})
    native = [(f"NCI_{i}", m) for i, m in native if any(a.GetSymbol() in ("Si", "Se") for a in m.GetAtoms())]
    out.notes["NCI molecules with Si or Se"] = len(native)
    picked, _ = nci_candidates()
    derived, notes = rewritten(picked)
    out.notes.update(notes)
    jobs = [(item, n_confs, seed, True) for item in native + derived]
    with multiprocessing.Pool(workers, initializer=RDLogger.DisableLog, initargs=("rdApp.*",)) as pool:
        for name, mol, kept in pool.imap(conformers, jobs, chunksize=4):
            if mol is None:
                out.skipped[kept] += 1
                continue
            for k, cid in enumerate(kept):
                mol.SetProp("_Name", f"{name}_conf{k}")
                out.write(mol, cid)
    out.close(time.time() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/default_model"), help="output folder (generated)")
    parser.add_argument("--qm9-limit", type=int, default=None, metavar="N", help="only the first N QM9 rows")
    parser.add_argument("--conformers", type=int, default=3, help="ETKDG conformers per NCI molecule")
    parser.add_argument("--seed", type=int, default=20240607, help="ETKDG random seed")
    parser.add_argument("--workers", type=int, default=2, help="processes for the ETKDG part")
    parser.add_argument("--only", choices=("qm9", "druglike", "sise"), help="build one file only")
    args = parser.parse_args()
    RDLogger.DisableLog("rdApp.*")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"rdkit {rdkit.__version__}, numpy {np.__version__}, output in {args.out}")
    if args.only in (None, "druglike"):
        make_druglike(args.out, args.conformers, args.seed, args.workers)
    if args.only in (None, "qm9"):
        make_qm9(args.out, args.qm9_limit)
    if args.only in (None, "sise"):
        make_sise(args.out, 2, args.seed, args.workers)


if __name__ == "__main__":
    main()
