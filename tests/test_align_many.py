"""`groupae align` as a command (issue 11): no torch without --model, one clear line per bad
pair, every record of A aligned (ensembles, --all-pairs, --pairs), JSON Lines of one shape."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SAMPLE, split
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.io import read_structures

A, B = SAMPLE / "align" / "a.sdf", SAMPLE / "align" / "b.sdf"
XA, XB = SAMPLE / "align" / "a.xyz", SAMPLE / "align" / "b.xyz"


def run(*args):
    return CliRunner().invoke(app, ["align", *map(str, args)])


def lines(output):
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def write_conformers(path, smiles, count, seed=3):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = list(AllChem.EmbedMultipleConfs(mol, count, randomSeed=seed))
    writer = Chem.SDWriter(str(path))
    for k in ids:
        mol.SetProp("_Name", f"conf{k}")
        writer.write(mol, confId=k)
    writer.close()
    return path


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """Five conformers (A) and a reference conformer (B) of one small drug-like molecule."""
    folder = tmp_path_factory.mktemp("ensemble")
    smiles = "CC(=O)Nc1ccc(O)cc1"  # paracetamol
    return (write_conformers(folder / "confs.sdf", smiles, 5), write_conformers(folder / "ref.sdf", smiles, 1, seed=11),
            folder)


def test_no_torch_without_a_model_and_options_checked_before_reading():
    code = f"""
import sys
from typer.testing import CliRunner
from groupae_cli.app import app
bad = CliRunner().invoke(app, ["align", {str(A)!r}, {str(B)!r}, "--match", "foo"])
assert bad.exit_code == 2 and "--match" in bad.stderr, bad.output
assert "rdkit" not in sys.modules  # refused before any structure was read
ok = CliRunner().invoke(app, ["align", {str(A)!r}, {str(B)!r}, "--json"])
assert ok.exit_code == 0, ok.output
plain = CliRunner().invoke(app, ["align", {str(XA)!r}, {str(XB)!r}, "--json"])  # element mode, plain XYZ
assert plain.exit_code == 0, plain.output
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "e3nn", "ase")
               or m.startswith(("scipy.spatial", "scipy.optimize.", "scipy.linalg")))
assert heavy == ["scipy.optimize._lsap"] or not heavy, heavy[:5]
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_plain_xyz_read_without_ase_as_ase_reads_it(monkeypatch):
    from groupae_cli.io import xyz

    files = sorted(SAMPLE.glob("**/*.xyz")) + sorted(SAMPLE.glob("**/*.extxyz"))
    fast = {f: list(read_structures(f)) for f in files}
    monkeypatch.setattr(xyz, "_plain_frame", lambda *args: None)  # every frame through ase
    for f in files:
        slow = list(read_structures(f))
        assert len(slow) == len(fast[f]) > 0
        for p, q in zip(fast[f], slow):
            assert p.name == q.name and p.feature_names == q.feature_names
            np.testing.assert_array_equal(p.numbers, q.numbers)
            np.testing.assert_array_equal(p.positions, q.positions)


@pytest.fixture(scope="module")
def small_molecules(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    for name, smiles in (("phenol", "Oc1ccccc1"), ("benzene", "c1ccccc1"), ("ethanol", "CCO"), ("ether", "COC")):
        write_conformers(folder / f"{name}.sdf", smiles, 1)
    (folder / "na.xyz").write_text("1\nsodium\nNa 0 0 0\n")
    (folder / "na2.xyz").write_text("1\nsodium\nNa 1 0 0\n")
    return folder


@pytest.mark.parametrize("a,b,expected", [
    ("phenol.sdf", "benzene.sdf", "different compositions: A has C6H6O (13 atoms), B has C6H6 (12 atoms): A has 1 O more"),
    ("ethanol.sdf", "ether.sdf", "different bond graphs"),
    ("na.xyz", "na2.xyz", "1 atom: a structure needs at least 2 (a single atom has no orientation"),
])
def test_each_bad_pair_is_one_clear_line(small_molecules, a, b, expected):
    result = run(small_molecules / a, small_molecules / b)
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and expected in message, message
    assert a in message  # the file and record named


def test_different_atom_counts_with_a_model_are_one_clear_line(small_molecules, checkpoint):
    """The learned guess used to meet different atom counts first: a raw numpy broadcast error."""
    result = run(small_molecules / "phenol.sdf", small_molecules / "benzene.sdf", "--model", checkpoint)
    assert result.exit_code == 2 and "different compositions" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ensemble_onto_a_reference_aligns_every_record_as_alone(ensemble, tmp_path):
    from groupae_cli.align import align_structures

    confs, ref, _ = ensemble
    result = run(confs, ref, "--json", "-o", tmp_path / "moved.sdf")
    assert result.exit_code == 0, result.output
    rows = lines(result.stdout)
    assert [r["a_index"] for r in rows] == [0, 1, 2, 3, 4] and {r["b_index"] for r in rows} == {0}
    structures, _ = split(read_structures(confs))
    (reference,), _ = split(read_structures(ref))
    for r, s in zip(rows, structures):
        assert r["rmsd"] == pytest.approx(align_structures(s, reference).rmsd, abs=1e-9)
    from rdkit import Chem

    moved = list(Chem.SDMolSupplier(str(tmp_path / "moved.sdf"), removeHs=False))
    assert len(moved) == 5
    assert [float(m.GetProp("groupae_rmsd")) for m in moved] == pytest.approx([r["rmsd"] for r in rows], abs=1e-5)
    target = reference.positions
    for m, r in zip(moved, rows):  # each moved record lies on the reference through its mapping
        xyz = m.GetConformer().GetPositions()
        rmsd = np.sqrt(((xyz - target[np.asarray(r["mapping"])]) ** 2).sum(-1).mean())
        assert rmsd == pytest.approx(r["rmsd"], abs=1e-3)


def test_all_pairs_and_record_by_record(ensemble, tmp_path):
    confs, _, _ = ensemble
    three = tmp_path / "three.sdf"
    two = tmp_path / "two.sdf"
    blocks = confs.read_text().split("$$$$\n")
    three.write_text("$$$$\n".join(blocks[:3]) + "$$$$\n")
    two.write_text("$$$$\n".join(blocks[3:5]) + "$$$$\n")
    refused = run(three, two)
    assert refused.exit_code == 2 and "--all-pairs" in refused.stderr
    full = lines(run(three, two, "--all-pairs", "--json").stdout)
    assert [(r["a_index"], r["b_index"]) for r in full] == [(i, j) for i in range(3) for j in range(2)]
    one_by_one = lines(run(three, three, "--json").stdout)
    assert [(r["a_index"], r["b_index"]) for r in one_by_one] == [(0, 0), (1, 1), (2, 2)]
    assert all(r["rmsd"] < 1e-6 for r in one_by_one)


def test_pairs_file_relative_to_its_folder(ensemble):
    confs, ref, folder = ensemble
    pairs = folder / "pairs.txt"
    pairs.write_text(f"# moving reference\n{ref.name} {confs.name}\n\n{A!s} {B!s}\n")
    result = run("--pairs", pairs, "--json")
    assert result.exit_code == 0, result.output
    rows = lines(result.stdout)
    assert len(rows) == 5 + 1  # ref onto each of the five conformers, then a onto b
    assert rows[-1]["b_file"] == str(B) and rows[0]["a_file"] == str(folder / ref.name)
    bad = folder / "bad.txt"
    bad.write_text(f"{ref.name}\n")
    refused = run("--pairs", bad)
    assert refused.exit_code == 2 and "line 1: two paths per line" in refused.stderr


def test_json_lines_have_one_shape_for_one_and_many_pairs(ensemble):
    from groupae_cli.cli.align import ROW_KEYS

    confs, ref, _ = ensemble
    one = run(A, B, "--json")
    many = run(confs, ref, "--json")
    assert one.exit_code == many.exit_code == 0
    assert len(one.stdout.strip().splitlines()) == 1
    for r in lines(one.stdout) + lines(many.stdout):
        assert tuple(r) == ROW_KEYS
    elements = lines(run(SAMPLE / "align" / "a.xyz", SAMPLE / "align" / "b.xyz", "--json").stdout)[0]
    assert tuple(elements) == ROW_KEYS and elements["match"] == "elements" and elements["skeleton_complete"] is None
    assert elements["proven_optimal"] is (elements["rmsd"] <= elements["rmsd_lower_bound"] + 1e-9)


def test_model_options_are_coherent():
    lone = run(A, B, "--no-refine")
    assert lone.exit_code == 2 and "needs --model" in lone.stderr
    both = run(A, B, "--no-model", "--model", "default")
    assert both.exit_code == 2 and "no learned guess" in both.stderr
    missing = run(A, B, "--model", "no-such-model")  # refused before anything is read or loaded
    assert missing.exit_code == 2 and "no such checkpoint file or shipped model (shipped: default" in missing.stderr
    plain = lines(run(A, B, "--no-model", "--json").stdout)[0]  # accepted: the default
    assert plain["model"] is None and plain["learned_rmsd"] is None


def test_progress_over_pairs_on_a_terminal_and_pair_failures_summarised(ensemble, monkeypatch, capsys):
    import io

    import typer

    from groupae_cli.cli.align import align

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    confs, ref, _ = ensemble
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with pytest.raises(typer.Exit):
        align(str(confs), str(ref), pairs=None, all_pairs=False, match=None, out=None, model=None, no_model=False,
              no_refine=False, prove=False, device="auto", json=True, fmt=None, strict=False, quiet=False)
    monkeypatch.undo()
    assert "aligning" in terminal.getvalue() and "5/5" in terminal.getvalue()
    assert len(lines(capsys.readouterr().out)) == 5
    mixed = run(A, SAMPLE / "molecules.sdf", "--json", "--strict")  # other molecules: pairs skipped
    assert mixed.exit_code == 1 and "pairs skipped" in mixed.stderr and len(lines(mixed.stdout)) == 3


def test_a_composition_error_says_how_the_two_differ():
    from groupae_cli.align import composition_difference

    phenol, aniline = [6] * 6 + [1] * 6 + [8], [6] * 6 + [1] * 7 + [7]
    assert composition_difference(phenol, aniline).endswith("A has 1 O more and 1 H, 1 N fewer")
    assert composition_difference(phenol, sorted(phenol, reverse=True)) is None


def test_align_refuses_to_write_over_its_input(small_molecules, tmp_path):
    a = tmp_path / "phenol.sdf"
    a.write_bytes((small_molecules / "phenol.sdf").read_bytes())
    before = a.read_bytes()
    result = run(a, a, "-o", a)
    assert result.exit_code == 2 and "is also an input" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and a.read_bytes() == before
