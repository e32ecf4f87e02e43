"""Issue 11, formats and bonds: PDB and MOL2 input (proteins and ligands), graph mode on inputs
without bonds through RDKit's bond perception, SD tags of A kept in `-o` output."""

import json

import numpy as np
import pytest
from conftest import SAMPLE, split
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.io import read_structures
from groupae_cli.io.formats import sniff


def run(*args):
    return CliRunner().invoke(app, ["align", *map(str, args)])


def rows(output):
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def conformers(smiles, count, seed=3):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = list(AllChem.EmbedMultipleConfs(mol, count, randomSeed=seed))
    return mol, ids


def mol2_block(mol, conf_id, name):
    """A Tripos MOL2 record of an RDKit molecule (SYBYL types from element, aromaticity and
    hybridisation; amide N as N.am), as a modelling program writes one."""
    conf = mol.GetConformer(conf_id)
    out = ["@<TRIPOS>MOLECULE", name, f"{mol.GetNumAtoms()} {mol.GetNumBonds()} 0 0 0", "SMALL", "NO_CHARGES", "",
           "@<TRIPOS>ATOM"]
    for atom in mol.GetAtoms():
        symbol, hybrid = atom.GetSymbol(), atom.GetHybridization().name
        kind = symbol if symbol == "H" else symbol + (".ar" if atom.GetIsAromatic() else ".2" if hybrid == "SP2" else ".3")
        if symbol == "N" and not atom.GetIsAromatic() and any(n.GetHybridization().name == "SP2" for n in atom.GetNeighbors()):
            kind = "N.am"
        p = conf.GetAtomPosition(atom.GetIdx())
        out.append(f"{atom.GetIdx() + 1:7d} {symbol}{atom.GetIdx() + 1:<5d} {p.x:10.4f} {p.y:10.4f} {p.z:10.4f} "
                   f"{kind:<6} 1 UNL1 0.0000")
    out.append("@<TRIPOS>BOND")
    for bond in mol.GetBonds():
        order = "ar" if bond.GetIsAromatic() else str(int(bond.GetBondTypeAsDouble()))
        out.append(f"{bond.GetIdx() + 1:6d} {bond.GetBeginAtomIdx() + 1:5d} {bond.GetEndAtomIdx() + 1:5d} {order}")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def peptide(tmp_path_factory):
    """Two conformers of the L-tetrapeptide GAVL with hydrogens (55 atoms, four methyl groups) as one
    two-model PDB file, its mirror image (the D-peptide) as another, and the RDKit molecule."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    folder = tmp_path_factory.mktemp("pdb")
    mol = Chem.AddHs(Chem.MolFromSequence("GAVL"), addCoords=True)
    ids = list(AllChem.EmbedMultipleConfs(mol, 2, randomSeed=5))
    (folder / "gavl.pdb").write_text(Chem.MolToPDBBlock(mol))
    mirror = Chem.Mol(mol, confId=ids[0])
    mirror.RemoveAllConformers()
    conf = Chem.Conformer(mol.GetConformer(ids[0]))
    for k in range(mol.GetNumAtoms()):
        p = conf.GetAtomPosition(k)
        conf.SetAtomPosition(k, (-p.x, p.y, p.z))
    mirror.AddConformer(conf, assignId=True)
    (folder / "mirror.pdb").write_text(Chem.MolToPDBBlock(mirror))
    return mol, ids, folder


def test_pdb_models_are_records_with_elements_positions_and_bonds(peptide):
    mol, ids, folder = peptide
    records, failures = split(read_structures(folder / "gavl.pdb"))
    assert not failures and len(records) == 2
    for record, conf_id in zip(records, ids):
        assert record.numbers.tolist() == [a.GetAtomicNum() for a in mol.GetAtoms()]
        np.testing.assert_allclose(record.positions, mol.GetConformer(conf_id).GetPositions(), atol=1e-3)
        got = {tuple(sorted(map(int, b))) for b in record.bonds}
        assert got == {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}
    assert sniff((folder / "gavl.pdb").read_bytes()[:4096]) == "pdb"


def test_pdb_protein_aligns_in_graph_mode_and_never_onto_its_mirror_image(peptide):
    from rdkit.Chem import rdMolAlign

    mol, ids, folder = peptide
    pdb = folder / "gavl.pdb"
    result = run(pdb, pdb, "--all-pairs", "--json")
    assert result.exit_code == 0, result.output
    by_pair = {(r["a_index"], r["b_index"]): r for r in rows(result.stdout)}
    assert {r["match"] for r in by_pair.values()} == {"graph"}
    assert by_pair[(0, 0)]["rmsd"] < 1e-6
    # the same graph optimum as RDKit's (hydrogens included; at most a few thousand isomorphisms here)
    best = rdMolAlign.GetBestRMS(mol, mol, ids[1], ids[0])
    assert by_pair[(0, 1)]["rmsd"] == pytest.approx(best, abs=1e-3)
    mirrored = rows(run(folder / "mirror.pdb", pdb, "--json", "--match", "elements").stdout)
    assert mirrored[0]["rmsd"] > 0.1  # an L-peptide is not its D mirror image
    assert np.linalg.det(np.array(mirrored[0]["rotation"])) == pytest.approx(1.0)


def test_mol2_ligands_read_with_their_names_and_align_as_rdkit_does(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import rdMolAlign

    mol, ids = conformers("CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O", 2)  # (S)-ibuprofen: chiral, three methyl groups
    path = tmp_path / "ibuprofen.mol2"
    path.write_text("# written by a test\n" + "".join(mol2_block(mol, k, f"ibu_{k}") for k in ids))
    records, failures = split(read_structures(path))
    assert not failures and [r.name for r in records] == [f"ibu_{k}" for k in ids]
    assert records[0].numbers.tolist() == [a.GetAtomicNum() for a in mol.GetAtoms()]
    assert len(records[0].bonds) == mol.GetNumBonds()
    assert sniff(path.read_bytes()) == "mol2"
    result = run(path, path, "--all-pairs", "--json")
    assert result.exit_code == 0, result.output
    row = next(r for r in rows(result.stdout) if (r["a_index"], r["b_index"]) == (0, 1))
    assert row["match"] == "graph" and row["bonds_a"] == "input"
    single = Chem.Mol(mol)
    assert row["rmsd"] == pytest.approx(rdMolAlign.GetBestRMS(single, single, ids[1], ids[0]), abs=1e-3)


def test_a_bad_pdb_model_or_mol2_record_is_one_line_naming_file_and_record(peptide, tmp_path):
    _, _, folder = peptide
    text = (folder / "gavl.pdb").read_text()
    second = text.index("MODEL        2")
    broken = text[:second] + text[second:].replace("           C  \n", "           Qq \n", 1)
    bad_pdb = tmp_path / "broken.pdb"
    bad_pdb.write_text(broken)
    records, failures = split(read_structures(bad_pdb))
    assert len(records) == 1 and len(failures) == 1
    assert failures[0].index == 1 and "line" in failures[0].reason
    assert "\n" not in str(failures[0]) and "broken.pdb" in str(failures[0])

    mol, ids = conformers("CC(=O)Nc1ccc(O)cc1", 2)
    blocks = [mol2_block(mol, k, f"para_{k}") for k in ids]
    bad_mol2 = tmp_path / "broken.mol2"
    bad_mol2.write_text(blocks[0] + blocks[1].replace("C.ar", "Qq.x", 1))
    records, failures = split(read_structures(bad_mol2))
    assert [r.name for r in records] == ["para_0"] and failures[0].index == 1
    line = str(failures[0])
    assert "\n" not in line and "broken.mol2" in line and "para_1" in line and "Qq" in line
    assert len(line) < 300  # RDKit's stack trace is not the reason


def test_graph_mode_on_xyz_perceives_bonds_and_says_so():
    sdf = rows(run(SAMPLE / "align" / "a.sdf", SAMPLE / "align" / "b.sdf", "--json").stdout)[0]
    result = run(SAMPLE / "align" / "a.xyz", SAMPLE / "align" / "b.xyz", "--match", "graph", "--json")
    assert result.exit_code == 0, result.output
    xyz = rows(result.stdout)[0]
    assert xyz["match"] == "graph" and (xyz["bonds_a"], xyz["bonds_b"]) == ("perceived", "perceived")
    assert sdf["bonds_a"] == "input"
    assert xyz["rmsd"] == pytest.approx(sdf["rmsd"], abs=1e-4)  # the same molecules (XYZ rounds coordinates)
    table = run(SAMPLE / "align" / "a.xyz", SAMPLE / "align" / "b.xyz", "--match", "graph")
    assert "bonds perceived (A, B)" in table.stdout
    elements = rows(run(SAMPLE / "align" / "a.xyz", SAMPLE / "align" / "b.xyz", "--json").stdout)[0]
    assert elements["match"] == "elements" and elements["bonds_a"] is None


def test_graph_mode_on_untyped_points_is_one_line(tmp_path):
    result = run(SAMPLE / "tetris.xyz", SAMPLE / "tetris.xyz", "--match", "graph")
    assert result.exit_code == 2
    assert "bonds cannot be perceived" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sd_tags_of_a_are_kept_in_the_output_with_the_rmsd(tmp_path):
    from rdkit import Chem

    mol, ids = conformers("CC(=O)Nc1ccc(O)cc1", 3)
    writer = Chem.SDWriter(str(tmp_path / "confs.sdf"))
    for k in ids:
        mol.SetProp("_Name", f"conf{k}")
        mol.SetProp("energy", f"{-10.5 - k:.2f}")
        mol.SetProp("note", f"first line {k}\nsecond line")
        writer.write(mol, confId=k)
    writer.close()
    result = run(tmp_path / "confs.sdf", SAMPLE / "align" / "b.sdf", "--match", "elements", "--json")
    assert result.exit_code == 2 and "different compositions" in result.stderr
    ref = tmp_path / "ref.sdf"
    Chem.MolToMolFile(mol, str(ref), confId=ids[0])
    result = run(tmp_path / "confs.sdf", ref, "--json", "-o", tmp_path / "moved.sdf")
    assert result.exit_code == 0, result.output
    found = rows(result.stdout)
    moved = list(Chem.SDMolSupplier(str(tmp_path / "moved.sdf"), removeHs=False))
    assert len(moved) == 3
    for k, m, r in zip(ids, moved, found):
        assert m.GetProp("energy") == f"{-10.5 - k:.2f}"
        assert m.GetProp("note") == f"first line {k}\nsecond line"
        assert float(m.GetProp("groupae_rmsd")) == pytest.approx(r["rmsd"], abs=1e-5)
