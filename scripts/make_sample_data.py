"""Generate the small, deterministic sample data set shipped in ``sample_data/``.

Everything is derived from data that ships with the dependencies (no network):

* ``molecules.sdf``  ~250 NCI molecules with one MMFF-optimised conformer plus
  20 molecules with three distinct conformers each (consecutive records).
  Source SMILES: ``rdkit/Data/NCI/first_5K.smi`` inside the rdkit package.
* ``xyz/``           the first 10 records of ``molecules.sdf`` as plain XYZ and
  as extended XYZ (written by ase).
* ``same/``          one molecule as SDF, XYZ and PLY (same atoms, same order).
* ``align/``         conformers 0 and 1 of one molecule; ``b`` is conformer 1
  rotated, translated and re-numbered, with the ground truth in ``truth.json``.
* ``tetris.xyz``     the 8 tetris pieces (element ``X``).
* ``point_clouds/``  PLY point clouds sampled on simple surfaces.

Derived files (xyz/, same/, align/) are built from ``molecules.sdf`` *as read
back*, so their coordinates agree exactly with the SDF (4 decimals).

Usage:  python scripts/make_sample_data.py [--out sample_data]
"""

import argparse
import json
import os
from pathlib import Path

import ase
import ase.io
import numpy as np
import rdkit
from plyfile import PlyData, PlyElement
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem, rdMolDescriptors
from scipy.spatial.transform import Rotation

SEED = 20240607
NCI_SMI = Path(os.path.dirname(rdkit.__file__)) / "Data" / "NCI" / "first_5K.smi"
ALLOWED_ELEMENTS = {"H", "B", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I"}
N_SINGLE, N_MULTI, N_CONFS = 250, 20, 3
MULTI_EVERY = 12          # every 12th picked molecule is tried as a multi-conformer one
CONF_RMS = 0.5            # Angstrom, minimum heavy-atom RMSD between kept conformers
# Hand-picked records of molecules.sdf (chosen after a first run, checked by asserts):
SAME_TITLE = "NCI_3605"   # 8-aminoquinoline, a primaquine analogue: 49 atoms, 1 stereocentre
ALIGN_TITLE = "NCI_4331"  # methyl 3,4-dimethoxycinnamate: 30 atoms, conf0/conf1 differ

TETRIS = {
    "chiral_1": [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 1, 0]],
    "chiral_2": [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, -1, 0]],
    "square": [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]],
    "line": [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3]],
    "corner": [[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]],
    "L": [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0]],
    "T": [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 1]],
    "zigzag": [[0, 0, 0], [1, 0, 0], [1, 1, 0], [2, 1, 0]],
}


# --------------------------------------------------------------------------- helpers
def kabsch_rmsd(p, q):
    """RMSD between two (n, 3) point sets after optimal superposition (no permutation)."""
    p, q = p - p.mean(0), q - q.mean(0)
    _, rssd = Rotation.align_vectors(p, q)
    return rssd / np.sqrt(len(p))


def frame(mol):
    """(title, symbols, positions) of an RDKit molecule's first conformer."""
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    return mol.GetProp("_Name"), symbols, mol.GetConformer().GetPositions()


def write_xyz(path, frames):
    """Plain multi-frame XYZ: count line, comment line, ``Symbol x y z`` (8 decimals)."""
    with open(path, "w") as fh:
        for title, symbols, pos in frames:
            fh.write(f"{len(symbols)}\n{title}\n")
            fh.writelines(f"{s:<2s} {x:15.8f} {y:15.8f} {z:15.8f}\n" for s, (x, y, z) in zip(symbols, pos))


def write_ply(path, arr, text):
    PlyData([PlyElement.describe(arr, "vertex")], text=text, byte_order="<").write(str(path))


def read_sdf(path):
    return list(Chem.SDMolSupplier(str(path), removeHs=False))


# --------------------------------------------------------------------------- molecules.sdf
def nci_candidates():
    """Filtered, de-duplicated (line_no, nci_id, mol) from first_5K.smi, in file order."""
    seen, out = set(), []
    for line_no, line in enumerate(NCI_SMI.read_text().splitlines(), start=1):
        smiles, nci_id = line.split()
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            continue
        mol = max(Chem.GetMolFrags(mol, asMols=True), key=lambda m: m.GetNumHeavyAtoms())
        if not 5 <= mol.GetNumHeavyAtoms() <= 40 or Chem.GetFormalCharge(mol) != 0:
            continue
        if any(a.GetSymbol() not in ALLOWED_ELEMENTS for a in mol.GetAtoms()):
            continue
        canonical = Chem.MolToSmiles(mol)
        if canonical not in seen and AllChem.MMFFHasAllMoleculeParams(Chem.AddHs(mol)):
            seen.add(canonical)
            out.append((line_no, nci_id, mol))
    return out


def embed(mol, n_confs):
    """AddHs, ETKDGv3 embedding and MMFF optimisation.

    Returns the molecule and a list of conformer ids: one for ``n_confs == 1``,
    otherwise ``n_confs`` conformers in order of MMFF energy that differ pairwise
    by > CONF_RMS heavy-atom RMSD. Returns (mol, []) on failure.
    """
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = SEED
    if n_confs == 1:
        if AllChem.EmbedMolecule(mol, params) != 0:
            return mol, []
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
        return mol, [mol.GetConformer().GetId()]
    params.pruneRmsThresh = CONF_RMS
    conf_ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=30, params=params))
    if len(conf_ids) < n_confs:
        return mol, []
    energies = [e for _, e in AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)]
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    pos = {c: mol.GetConformer(c).GetPositions()[heavy] for c in conf_ids}
    kept = []
    for c in sorted(conf_ids, key=lambda c: energies[conf_ids.index(c)]):
        if all(kabsch_rmsd(pos[c], pos[k]) > CONF_RMS for k in kept):
            kept.append(c)
    return mol, kept[:n_confs] if len(kept) >= n_confs else []


def make_molecules(out):
    """Write molecules.sdf from an evenly spread selection of NCI molecules."""
    candidates = nci_candidates()
    picks = candidates[:: len(candidates) // 300]
    writer = Chem.SDWriter(str(out / "molecules.sdf"))
    n_single = n_multi = 0
    for idx, (line_no, nci_id, mol) in enumerate(picks):
        multi_turn = n_multi < N_MULTI and (idx % MULTI_EVERY == 0 or n_single >= N_SINGLE)
        if multi_turn and rdMolDescriptors.CalcNumRotatableBonds(mol) >= 4:
            want_multi = True  # flexible enough for distinct conformers
        elif n_single < N_SINGLE:
            want_multi = False
        else:
            continue
        mol_h, conf_ids = embed(mol, N_CONFS if want_multi else 1)
        if not conf_ids:
            continue
        mol_h.SetProp("smiles", Chem.MolToSmiles(mol))
        mol_h.SetProp("source", f"rdkit/Data/NCI/first_5K.smi line {line_no}")
        for k, conf_id in enumerate(conf_ids):
            mol_h.SetProp("_Name", f"NCI_{nci_id}_conf{k}" if want_multi else f"NCI_{nci_id}")
            writer.write(mol_h, confId=conf_id)
        n_multi += want_multi
        n_single += not want_multi
        if n_single == N_SINGLE and n_multi == N_MULTI:
            break
    writer.close()
    assert (n_single, n_multi) == (N_SINGLE, N_MULTI), (n_single, n_multi)


# --------------------------------------------------------------------------- derived files
def make_xyz(out, mols):
    (out / "xyz").mkdir(exist_ok=True)
    frames = [frame(m) for m in mols[:10]]
    write_xyz(out / "xyz" / "molecules_10.xyz", frames)
    atoms = [ase.Atoms(symbols=s, positions=p, info={"name": t}) for t, s, p in frames]
    ase.io.write(out / "xyz" / "molecules_10.extxyz", atoms, format="extxyz")


def make_same(out, mols):
    """The record SAME_TITLE in SDF, XYZ and PLY (same atoms, same order)."""
    mol = next(m for m in mols if m.GetProp("_Name") == SAME_TITLE)
    (out / "same").mkdir(exist_ok=True)
    with Chem.SDWriter(str(out / "same" / "molecule.sdf")) as writer:
        writer.write(mol)
    write_xyz(out / "same" / "molecule.xyz", [frame(mol)])
    pos = mol.GetConformer().GetPositions()
    arr = np.empty(len(pos), dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("atomic_number", "u1")])
    arr["x"], arr["y"], arr["z"] = pos.T
    arr["atomic_number"] = [a.GetAtomicNum() for a in mol.GetAtoms()]
    write_ply(out / "same" / "molecule.ply", arr, text=False)


def make_align(out, mols):
    """a = conformer 0; b = permute(R @ conformer 1 + t). See truth.json."""
    titles = [m.GetProp("_Name") for m in mols]
    mol_a = mols[titles.index(f"{ALIGN_TITLE}_conf0")]
    mol_1 = mols[titles.index(f"{ALIGN_TITLE}_conf1")]
    rng = np.random.default_rng(SEED)
    rot = Rotation.random(random_state=SEED).as_matrix()
    t = rng.uniform(-5.0, 5.0, size=3)
    perm = rng.permutation(mol_1.GetNumAtoms())
    moved = Chem.Mol(mol_1)
    conf = moved.GetConformer()
    for j, p in enumerate(conf.GetPositions() @ rot.T + t):
        conf.SetAtomPosition(j, p.tolist())
    mol_b = Chem.RenumberAtoms(moved, perm.tolist())  # new atom j = old atom perm[j]
    mol_b.SetProp("_Name", mol_1.GetProp("_Name") + "_moved")

    (out / "align").mkdir(exist_ok=True)
    for name, mol in (("a", mol_a), ("b", mol_b)):
        write_xyz(out / "align" / f"{name}.xyz", [frame(mol)])
        with Chem.SDWriter(str(out / "align" / f"{name}.sdf")) as writer:
            writer.write(mol)
    heavy = [a.GetIdx() for a in mol_a.GetAtoms() if a.GetAtomicNum() > 1]
    pos_a, pos_1 = mol_a.GetConformer().GetPositions(), mol_1.GetConformer().GetPositions()
    truth = {
        "a_source": mol_a.GetProp("_Name"),
        "b_source": mol_1.GetProp("_Name"),
        "convention": "b.positions[j] = rotation @ conf1.positions[permutation[j]] + translation; "
                      "b atom j is a atom permutation[j] (same atom order in conf0 and conf1)",
        "rotation": rot.tolist(),
        "translation": t.tolist(),
        "permutation": perm.tolist(),
        "conformer_rmsd_all_atoms": kabsch_rmsd(pos_a, pos_1),
        "conformer_rmsd_heavy_atoms": kabsch_rmsd(pos_a[heavy], pos_1[heavy]),
    }
    (out / "align" / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth


def make_tetris(out):
    write_xyz(out / "tetris.xyz",
              [(name, ["X"] * 4, np.array(p, dtype=float)) for name, p in TETRIS.items()])


def make_point_clouds(out):
    rng = np.random.default_rng(SEED)
    (out / "point_clouds").mkdir(exist_ok=True)

    def xyz_array(points, extra=()):
        arr = np.empty(len(points), dtype=[(c, "<f4") for c in ("x", "y", "z", *extra)])
        arr["x"], arr["y"], arr["z"] = points.T
        return arr

    sphere = rng.normal(size=(500, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    write_ply(out / "point_clouds" / "sphere.ply", xyz_array(sphere), text=False)

    # R = 2, r = 0.5, uniform over the surface: keep an angle v with probability (R + r cos v) / (R + r)
    u, v = rng.uniform(0, 2 * np.pi, size=(2, 2000))
    keep = rng.uniform(size=2000) < (2 + 0.5 * np.cos(v)) / 2.5
    u, v = u[keep][:600], v[keep][:600]
    torus = np.stack([(2 + 0.5 * np.cos(v)) * np.cos(u), (2 + 0.5 * np.cos(v)) * np.sin(u),
                      0.5 * np.sin(v)], axis=1)
    write_ply(out / "point_clouds" / "torus.ply", xyz_array(torus), text=True)

    axis, sign = rng.integers(0, 3, size=400), rng.choice([-1.0, 1.0], size=400)
    cube = rng.uniform(-1, 1, size=(400, 3))  # surface of [-1, 1]^3, faces equally likely
    normals = np.zeros((400, 3))
    cube[np.arange(400), axis] = sign
    normals[np.arange(400), axis] = sign
    arr = xyz_array(cube, extra=("nx", "ny", "nz"))
    arr["nx"], arr["ny"], arr["nz"] = normals.T
    write_ply(out / "point_clouds" / "cube.ply", arr, text=False)

    t = np.linspace(0, 6 * np.pi, 300)  # 3 turns, radius 1, pitch 1, evenly spaced
    helix = np.stack([np.cos(t), np.sin(t), t / (2 * np.pi)], axis=1)  # right-handed
    write_ply(out / "point_clouds" / "helix.ply", xyz_array(helix), text=True)


# --------------------------------------------------------------------------- checks
def verify(out, truth):
    mols = read_sdf(out / "molecules.sdf")
    assert len(mols) == N_SINGLE + N_MULTI * N_CONFS and all(m is not None for m in mols)
    for m in mols:
        pos = m.GetConformer().GetPositions()
        assert any(a.GetAtomicNum() == 1 for a in m.GetAtoms()) and np.abs(pos[:, 2]).max() > 0
    for path, n in (("xyz/molecules_10.xyz", 10), ("xyz/molecules_10.extxyz", 10),
                    ("tetris.xyz", 8), ("same/molecule.xyz", 1),
                    ("align/a.xyz", 1), ("align/b.xyz", 1)):
        assert len(ase.io.read(out / path, index=":")) == n, path
    for path in sorted(out.rglob("*.ply")):
        PlyData.read(str(path))
    conf1 = next(m for m in mols if m.GetProp("_Name") == truth["b_source"])
    b = ase.io.read(out / "align" / "b.xyz")
    expected = conf1.GetConformer().GetPositions() @ np.array(truth["rotation"]).T
    expected = (expected + truth["translation"])[truth["permutation"]]
    assert np.abs(b.positions - expected).max() < 1e-6
    numbers = np.array([a.GetAtomicNum() for a in conf1.GetAtoms()])[truth["permutation"]]
    assert (b.numbers == numbers).all()
    b_sdf = read_sdf(out / "align" / "b.sdf")[0]
    assert np.abs(b_sdf.GetConformer().GetPositions() - expected).max() < 1e-3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "sample_data")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    RDLogger.DisableLog("rdApp.*")

    make_molecules(out)
    mols = read_sdf(out / "molecules.sdf")
    make_xyz(out, mols)
    make_same(out, mols)
    truth = make_align(out, mols)
    make_tetris(out)
    make_point_clouds(out)
    verify(out, truth)
    print(f"wrote and verified {out}")


if __name__ == "__main__":
    main()
