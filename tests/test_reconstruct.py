"""`groupae reconstruct`: decoded structures and their errors, from structure files and embed files."""

import json

import numpy as np
import pytest
from conftest import split
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.io import read_structures

runner = CliRunner()
SAMPLE = __import__("conftest").SAMPLE


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


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
        assert after.has_bonds and len(after.bonds) > 0  # perceived from the decoded geometry


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


def test_bad_output_name_and_stdout(checkpoint, tmp_path):
    bad = runner.invoke(app, ["reconstruct", str(SAMPLE / "tetris.xyz"), "-o", str(tmp_path / "x.ply"),
                              "--model", str(checkpoint)])
    assert bad.exit_code == 2 and "write reconstructions as .xyz or .sdf" in bad.stderr
    to_stdout = run("reconstruct", SAMPLE / "same" / "molecule.sdf", "-o", "-", "--model", checkpoint,
                    "--device", "cpu", "--quiet")
    assert to_stdout.stdout.startswith("49\n")
