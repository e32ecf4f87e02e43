"""`groupae reconstruct`: decoded structures and their errors, from structure files and embed files."""

import json
import re

import numpy as np
import pytest
from conftest import split
from rdkit import Chem
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.io import read_structures

runner = CliRunner()
SAMPLE = __import__("conftest").SAMPLE


SUMMARY = re.compile(r"summary: (\d+) records, RMSD median (\S+) Å \(mean (\S+)\), element accuracy (\S+)%")
BOND_SOURCES = {"input", "perceived", "connectivity", "none"}


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def molecules(tmp_path_factory):
    """The first 24 records of the sample SDF: enough variety, a few seconds to reconstruct."""
    records = (SAMPLE / "molecules.sdf").read_text().split("$$$$\n")[:24]
    path = tmp_path_factory.mktemp("sdf") / "molecules_24.sdf"
    path.write_text("$$$$\n".join(records) + "$$$$\n")
    return path


@pytest.fixture(scope="module")
def decoded(molecules, tmp_path_factory):
    """(JSON output, SDF written) of reconstructing `molecules` with the shipped default model."""
    out = tmp_path_factory.mktemp("decoded") / "decoded.sdf"
    return json.loads(run("reconstruct", molecules, "-o", out, "--device", "cpu", "--json").stdout), out


def graph(mol):
    return ({(b.GetBeginAtomIdx(), b.GetEndAtomIdx(), b.GetBondType()) for b in mol.GetBonds()},
            [a.GetFormalCharge() for a in mol.GetAtoms()])


def test_reconstruct_writes_structures_and_their_errors(checkpoint, tmp_path):
    source = SAMPLE / "xyz" / "molecules_10.xyz"
    out = tmp_path / "decoded.sdf"
    rows = json.loads(run("reconstruct", source, "-o", out, "--model", checkpoint, "--device", "cpu", "--json").stdout)
    originals, _ = split(read_structures(source))
    decoded, failures = split(read_structures(out))
    assert not failures and len(decoded) == len(originals) == len(rows["records"])
    for row, before, after in zip(rows["records"], originals, decoded):
        assert row["name"] == before.name == after.name and row["n_atoms"] == len(before) == len(after)
        rmsd = np.sqrt(((after.positions - before.positions) ** 2).sum(-1).mean())
        assert row["rmsd"] == pytest.approx(rmsd, abs=1e-3)  # the SDF keeps 4 decimals
        assert row["element_accuracy"] == pytest.approx((after.numbers == before.numbers).mean())


def test_sdf_reconstructions_read_back_with_the_input_bonds_and_charges(molecules, decoded):
    rows, out = decoded
    assert all(m is not None for m in Chem.SDMolSupplier(str(out)))  # default sanitisation, every record
    inputs = list(Chem.SDMolSupplier(str(molecules), removeHs=False))
    outputs = list(Chem.SDMolSupplier(str(out), removeHs=False))
    assert len(outputs) == len(inputs) == len(rows["records"]) == 24
    for row, before, after in zip(rows["records"], inputs, outputs):
        assert after.GetProp("_Name") == before.GetProp("_Name") == row["name"]
        assert after.GetProp("groupae_bonds") == "input"
        assert graph(after) == graph(before)  # same bonds, orders and formal charges, same atom order
        assert float(after.GetProp("groupae_rmsd")) == pytest.approx(row["rmsd"], abs=1e-4)
        assert float(after.GetProp("groupae_element_accuracy")) == pytest.approx(row["element_accuracy"], abs=1e-4)


@pytest.mark.parametrize("trained", [True, False], ids=["default-model", "untrained"])
def test_reconstructions_without_input_bonds_read_back(checkpoint, tmp_path, trained):
    """Bonds perceived from a blurred decoding (or, untrained, nonsense) never make an unreadable record."""
    source = SAMPLE / "xyz" / "molecules_10.xyz"
    out = tmp_path / "decoded.sdf"
    run("reconstruct", source, "-o", out, "--model", "default" if trained else checkpoint, "--device", "cpu",
        "--quiet")
    mols = list(Chem.SDMolSupplier(str(out)))
    assert len(mols) == 10 and all(m is not None for m in mols)
    for mol, before in zip(mols, split(read_structures(source))[0]):
        assert mol.GetProp("_Name") == before.name
        assert mol.GetProp("groupae_bonds") in BOND_SOURCES - {"input"}
        assert mol.HasProp("groupae_rmsd") and mol.HasProp("groupae_element_accuracy")


def test_summary_line_and_json_summary(molecules, decoded, tmp_path):
    lines = run("reconstruct", molecules, "-o", tmp_path / "decoded.xyz", "--device", "cpu", "--quiet").stdout.splitlines()
    table = [float(line.split("\t")[3]) for line in lines[1:-1]]
    n, median, mean, accuracy = SUMMARY.fullmatch(lines[-1]).groups()
    assert int(n) == len(table) == 24
    assert float(median) == pytest.approx(np.median(table), abs=0.006)  # the line keeps 2 decimals
    assert float(mean) == pytest.approx(np.mean(table), abs=0.006)
    summary = decoded[0]["summary"]
    assert summary["n_records"] == 24 and summary["rmsd_median"] == pytest.approx(float(median), abs=0.006)
    atoms = sum(r["n_atoms"] for r in decoded[0]["records"])
    right = sum(r["element_accuracy"] * r["n_atoms"] for r in decoded[0]["records"])
    assert summary["element_accuracy"] == pytest.approx(right / atoms)
    assert float(accuracy) == pytest.approx(100 * right / atoms, abs=0.006)


def test_decoding_an_embed_file_gives_the_same_structures(checkpoint, tmp_path):
    source = SAMPLE / "xyz" / "molecules_10.xyz"
    common = ["--model", checkpoint, "--device", "cpu", "--quiet"]
    run("reconstruct", source, "-o", tmp_path / "direct.xyz", *common)
    run("embed", source, "-o", tmp_path / "emb.h5", *common)
    table = run("reconstruct", tmp_path / "emb.h5", "-o", tmp_path / "decoded.xyz", *common).stdout
    direct, _ = split(read_structures(tmp_path / "direct.xyz"))
    decoded, _ = split(read_structures(tmp_path / "decoded.xyz"))
    assert [s.name for s in direct] == [s.name for s in decoded]
    for a, b in zip(direct, decoded):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-4)
    assert table.splitlines()[1].split("\t")[3] == ""  # no input to compare with: no RMSD
    assert table.splitlines()[-1] == "summary: 10 records"


def test_bad_output_name_and_stdout(checkpoint, tmp_path):
    bad = runner.invoke(app, ["reconstruct", str(SAMPLE / "tetris.xyz"), "-o", str(tmp_path / "x.ply"),
                              "--model", str(checkpoint)])
    assert bad.exit_code == 2 and "write reconstructions as .xyz or .sdf" in bad.stderr
    to_stdout = run("reconstruct", SAMPLE / "same" / "molecule.sdf", "-o", "-", "--model", checkpoint,
                    "--device", "cpu", "--quiet")
    assert to_stdout.stdout.startswith("49\n")


def test_stdout_output_sends_the_table_to_stderr_and_refuses_json(checkpoint):
    """`-o -`: the structures own stdout, so the table and summary go to stderr; --json would mix
    with them and is refused, one line, exit 2."""
    args = ["reconstruct", str(SAMPLE / "same" / "molecule.sdf"), "-o", "-", "--model", str(checkpoint), "--device", "cpu"]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0 and shown.stdout.startswith("49\n")
    assert "summary: 1 record," in shown.stderr and "name\tindex\tn_atoms" in shown.stderr
    assert "summary" not in shown.stdout
    both = runner.invoke(app, [*args, "--json"])
    assert both.exit_code == 2 and both.stderr.count("\n") == 1 and "--json" in both.stderr and not both.stdout
