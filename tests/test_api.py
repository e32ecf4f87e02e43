"""The Python API re-exported from groupae_cli: RDKit, ASE and arrays in; numpy arrays and result
objects out; the same numbers as the commands."""

import json
import pydoc
import subprocess
import sys

import numpy as np
import pytest
from ase.build import molecule
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign
from typer.testing import CliRunner

import groupae_cli as g
from groupae_cli.app import app

runner = CliRunner()
SAMPLE = __import__("conftest").SAMPLE


@pytest.fixture(scope="module")
def mol():
    """Paracetamol with hydrogens and a formal-charge-free graph, three conformers."""
    m = Chem.AddHs(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"))
    m.SetProp("_Name", "paracetamol")
    AllChem.EmbedMultipleConfs(m, numConfs=3, randomSeed=7)
    return m


@pytest.fixture(scope="module")
def zwitterion():
    """Glycine as a zwitterion: formal charges +1 and -1."""
    m = Chem.AddHs(Chem.MolFromSmiles("[NH3+]CC(=O)[O-]"))
    AllChem.EmbedMolecule(m, randomSeed=3)
    return m


@pytest.fixture(scope="module")
def model(checkpoint):
    return g.load_model(checkpoint, "cpu")


def moved_copy(structure, rng):
    """The structure rotated, translated and renumbered: (copy, order), copy atom k being atom order[k]."""
    from scipy.spatial.transform import Rotation

    order = rng.permutation(len(structure))
    rotation = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    positions = structure.positions[order] @ rotation.T + rng.normal(size=3) * 3
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    bonds = None if structure.bonds is None else rank[structure.bonds]
    return g.from_arrays(structure.numbers[order], positions, structure.name, bonds=bonds,
                         bond_orders=structure.bond_orders,
                         charges=None if structure.charges is None else structure.charges[order]), order


def test_import_is_light_and_help_documents_the_api():
    code = ("import sys, groupae_cli; "
            "print(sorted(m for m in ('torch', 'rdkit', 'h5py', 'e3nn', 'ase', 'scipy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    shown = pydoc.render_doc(g, renderer=pydoc.plaintext)
    for name in g.__all__:
        assert name in shown
        assert getattr(g, name).__doc__, name
        first_line = getattr(g, name).__doc__.strip().splitlines()[0]
        assert first_line in shown, name
    assert {"from_rdkit", "from_ase", "load_model", "embed", "reconstruct", "align", "canonical_form",
            "read_embeddings", "to_rdkit", "to_ase"} <= set(g.__all__) <= set(dir(g))


def test_modules_named_like_functions_do_not_replace_them():
    """groupae_cli/embed.py, align.py, reconstruct.py are modules too; importing them (as the
    commands and the benchmarks do) leaves g.embed, g.align, g.reconstruct the API functions."""
    import importlib

    from groupae_cli import _api

    for name in ("embed", "align", "reconstruct"):
        module = importlib.import_module(f"groupae_cli.{name}")
        assert getattr(g, name) is getattr(_api, name) and module.__name__ == f"groupae_cli.{name}"
    from groupae_cli.align import refine  # the modules' own names import as before

    assert callable(refine)


def test_rdkit_conformer_in_with_bonds_and_charges_and_back(mol, zwitterion):
    for c in range(mol.GetNumConformers()):
        s = g.from_rdkit(mol, conf_id=c)
        np.testing.assert_array_equal(s.positions, mol.GetConformer(c).GetPositions())
    s = g.from_rdkit(zwitterion)
    assert s.name == "molecule" and len(s) == zwitterion.GetNumAtoms()
    assert sorted(s.charges.tolist()) == sorted(a.GetFormalCharge() for a in zwitterion.GetAtoms())
    assert {tuple(sorted(b)) for b in s.bonds.tolist()} == {
        tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in zwitterion.GetBonds()}
    back = g.to_rdkit(s)
    assert back.GetProp("groupae_bonds") == "input"
    assert Chem.MolToSmiles(Chem.RemoveHs(back)) == Chem.MolToSmiles(Chem.RemoveHs(zwitterion))
    np.testing.assert_allclose(back.GetConformer().GetPositions(), s.positions)
    with pytest.raises(ValueError, match="no conformer"):
        g.from_rdkit(Chem.MolFromSmiles("CCO"))
    with pytest.raises(ValueError, match="conformer 7"):
        g.from_rdkit(mol, conf_id=7)


def test_ase_and_arrays_in_and_back():
    atoms = molecule("CH3CH2OH")
    s = g.from_ase(atoms)
    assert s.name == "C2H6O" and s.bonds is None
    np.testing.assert_array_equal(s.numbers, atoms.numbers)
    back = g.to_ase(s)
    np.testing.assert_array_equal(back.positions, atoms.positions)
    assert back.info["name"] == "C2H6O"
    arrays = g.from_arrays(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], "water")
    assert arrays.numbers.tolist() == [8, 1, 1]
    with pytest.raises(ValueError, match="coincide"):
        g.from_arrays([1, 1], np.zeros((2, 3)))
    with pytest.raises(TypeError, match="read the file"):
        g.embed(None, "molecules.sdf")


def test_embed_is_invariant_and_equals_the_command(model, mol, checkpoint, tmp_path, rng):
    """RDKit Mols and ASE Atoms in, arrays out; a moved renumbered copy gets the same z and the
    moved frame; the HDF5 written here and by `groupae embed` hold the same numbers."""
    atoms = molecule("CH3CH2OH")
    s = g.from_rdkit(mol)
    copy, _ = moved_copy(s, rng)
    e = g.embed(model, [mol, atoms, copy], batch_size=2)
    assert e.embedding.shape == (3, model.config.embedding_dim) and e.embedding.dtype == np.float32
    assert e.names == ["paracetamol", "C2H6O", "paracetamol"] and len(e) == 3
    assert [len(p) for p in e.permutation] == [len(s), len(atoms), len(s)]
    np.testing.assert_allclose(e.embedding[2], e.embedding[0], atol=1e-4 * np.abs(e.embedding[0]).max())
    canonical_0 = (s.positions[e.permutation[0]] - e.translation[0]) @ e.rotation[0]
    canonical_2 = (copy.positions[e.permutation[2]] - e.translation[2]) @ e.rotation[2]
    np.testing.assert_allclose(canonical_2, canonical_0, atol=2e-3)

    path = g.embed(model, [mol, atoms], out=tmp_path / "api.h5")
    stored = g.read_embeddings(path)
    np.testing.assert_allclose(stored.embedding, e.embedding[:2], atol=1e-5)
    assert stored.names == ["paracetamol", "C2H6O"] and all(isinstance(n, str) for n in stored.names)
    assert stored.attrs["complete"] and stored.attrs["model"] == "tiny"

    g.write([s, g.from_ase(atoms)], tmp_path / "two.sdf")
    result = runner.invoke(app, ["embed", str(tmp_path / "two.sdf"), "-o", str(tmp_path / "cli.h5"),
                                 "--model", str(checkpoint), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    cli = g.read_embeddings(tmp_path / "cli.h5")
    np.testing.assert_allclose(cli.embedding, stored.embedding, atol=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(cli.permutation, stored.permutation))
    assert cli.sources == [str(tmp_path / "two.sdf")] * 2 and cli.indices.tolist() == [0, 1]


def test_an_embed_file_reads_as_a_table(checkpoint, tmp_path):
    out = tmp_path / "sample.h5"
    assert runner.invoke(app, ["embed", str(SAMPLE / "xyz" / "molecules_10.xyz"), "-o", str(out), "--model",
                               str(checkpoint), "--device", "cpu", "--quiet"]).exit_code == 0
    stored = g.read_embeddings(out)
    table = stored.table()
    assert len(table["name"]) == 10 and all(isinstance(n, str) for n in table["name"])
    assert list(table)[:5] == ["name", "source", "index", "n_atoms", "degenerate"]
    np.testing.assert_array_equal(np.stack([table[f"z{k}"] for k in range(stored.embedding.shape[1])], 1),
                                  stored.embedding)
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(table)
    assert frame.shape == (10, 5 + stored.embedding.shape[1]) and frame["name"].dtype != np.dtype("S")


def test_canonical_form_is_the_same_for_a_moved_renumbered_copy(model, mol, rng):
    s = g.from_rdkit(mol)
    copy, _ = moved_copy(s, rng)
    first, second = g.canonical_form(model, [mol, copy])
    np.testing.assert_array_equal(first.numbers, second.numbers)
    np.testing.assert_allclose(second.positions, first.positions, atol=2e-3)
    assert {tuple(sorted(b)) for b in first.bonds.tolist()} == {tuple(sorted(b)) for b in second.bonds.tolist()}
    np.testing.assert_allclose(first.positions.mean(0), 0, atol=1e-4)  # centred: t is the centroid
    single = g.canonical_form(model, s)
    np.testing.assert_allclose(single.positions, first.positions, atol=1e-5)


def test_reconstruct_matches_the_command(model, checkpoint, tmp_path):
    path = SAMPLE / "xyz" / "molecules_10.xyz"
    results = g.reconstruct(model, g.read(path), batch_size=4)
    shown = runner.invoke(app, ["reconstruct", str(path), "-o", str(tmp_path / "d.xyz"), "--model", str(checkpoint),
                                "--device", "cpu", "--json"])
    rows = json.loads(shown.stdout)["records"]
    np.testing.assert_allclose([r.rmsd for r in results], [r["rmsd"] for r in rows], atol=1e-4)
    one = g.reconstruct(model, molecule("CH3CH2OH"))
    assert one.structure.name == "C2H6O" and one.rmsd > 0
    assert g.to_ase(one.structure).positions.shape == (9, 3)


def test_two_rdkit_conformers_align_as_rdkit_finds(mol, model):
    a, b = g.from_rdkit(mol, conf_id=0), g.from_rdkit(mol, conf_id=1)
    result = g.align(a, b)
    assert result.mode == "graph" and isinstance(result, g.AlignResult)
    best = rdMolAlign.GetBestRMS(Chem.Mol(mol), Chem.Mol(mol), 1, 0)
    assert abs(result.rmsd - best) < 1e-3
    moved = result.transform(a.positions)
    assert np.sqrt(((moved - b.positions[result.mapping]) ** 2).sum(-1).mean()) == pytest.approx(result.rmsd)
    learned = g.align(mol, b, match="elements", model=model)
    assert learned.mode == "elements" and learned.rmsd <= result.rmsd + 1e-6


def test_what_the_model_cannot_take_is_named(model):
    gold = g.from_arrays(["Au", "Au"], [[0, 0, 0], [2.9, 0, 0]], "gold")
    for call in (lambda: g.embed(model, gold), lambda: g.reconstruct(model, gold), lambda: g.canonical_form(model, gold)):
        with pytest.raises(ValueError, match="gold: element Au unknown to the model"):
            call()
    with pytest.raises(ValueError, match="needs a model"):
        g.align(gold, gold, refine=False)


def test_reconstruct_raises_naming_a_record_it_cannot_decode(model, tmp_path, monkeypatch):
    """g.reconstruct returns only Reconstructions: a NaN record of an embed file, or a NaN output of
    the model, is a ValueError naming the record (as g.embed names a structure it cannot take)."""
    import importlib
    import re

    import h5py

    reconstruct_module = importlib.import_module("groupae_cli.reconstruct")  # the attribute is the function
    structures = g.read(SAMPLE / "xyz" / "molecules_10.xyz")
    path = g.embed(model, structures, out=tmp_path / "ten.h5")
    assert all(isinstance(r, g.Reconstruction) for r in g.reconstruct(model, path))
    with h5py.File(path, "r+") as f:
        f["embedding"][4] = np.nan
    with pytest.raises(ValueError, match=f"record 4 \\({re.escape(structures[4].name)}\\): .*NaN"):
        g.reconstruct(model, path)
    decode = reconstruct_module.reconstruct

    def nan_third(model, batch, device):
        results = decode(model, batch, device)
        results[min(2, len(results) - 1)].structure.positions[:] = np.nan
        return results

    monkeypatch.setattr(reconstruct_module, "reconstruct", nan_third)
    with pytest.raises(ValueError, match=f"\\({re.escape(structures[2].name)}\\): .*NaN"):
        g.reconstruct(model, structures)
