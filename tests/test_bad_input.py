"""Every kind of bad input gets a clear one-line message or a recorded skip, and the good records
around a bad one are all kept."""

import gzip
import shutil

import numpy as np
import pytest
from conftest import split
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.errors import UsageError
from groupae_cli.io import Failure, read_inputs, read_structures

runner = CliRunner()


def frames(sample, count=2):
    """The first `count` frames of a real multi-frame XYZ file, as text."""
    lines = (sample / "xyz" / "molecules_10.xyz").read_text().splitlines(keepends=True)
    out, i = [], 0
    for _ in range(count):
        n = int(lines[i])
        out.append("".join(lines[i : i + n + 2]))
        i += n + 2
    return out


def water(comment, *atom_lines):
    return f"{len(atom_lines)}\n{comment}\n" + "".join(line + "\n" for line in atom_lines)


BAD_XYZ = {
    "unknown element": (water("bad", "O 0 0 0", "Xx 0.96 0 0", "H -0.24 0.93 0"), "unknown element symbol 'Xx'"),
    "nan": (water("bad", "O 0 0 0", "H nan 0 0", "H -0.24 0.93 0"), "non-finite coordinate"),
    "inf": (water("bad", "O 0 0 0", "H 0 -inf 0", "H -0.24 0.93 0"), "non-finite coordinate"),
    "absurd": (water("bad", "O 0 0 0", "H 1e30 0 0", "H -0.24 0.93 0"), "absurd coordinate 1e+30"),
    "one atom": (water("bad", "O 0 0 0"), "1 atom: a structure needs at least 2"),
    "coincident": (water("bad", "O 0 0 0", "H 0.5 0.5 0.5", "H 0.5 0.5 0.5"), "atoms 1 and 2 coincide"),
    "fewer atoms than count": ("3\nbad\nO 0 0 0\nH 0.96 0 0\n", "says 3 atoms but line"),
    "more atoms than count": ("2\nbad\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n", "says 2 atoms but more atom lines follow"),
    "count line not a number": ("three\nbad\nO 0 0 0\n", "expected an atom count, found 'three'"),
}


@pytest.mark.parametrize("case", sorted(BAD_XYZ))
def test_bad_xyz_record_is_skipped_and_neighbours_kept(sample, tmp_path, case):
    text, message = BAD_XYZ[case]
    before, after = frames(sample)
    path = tmp_path / "mixed.xyz"
    path.write_text(before + text + after)
    good, failures = split(read_structures(path))
    originals = list(read_structures(sample / "xyz" / "molecules_10.xyz"))[:2]
    assert [g.index for g in good] == [0, 2]
    for kept, original in zip(good, originals):
        assert kept.name == original.name
        np.testing.assert_array_equal(kept.positions, original.positions)
    assert len(failures) == 1 and failures[0].index == 1
    assert message in failures[0].reason
    assert "\n" not in str(failures[0])


def test_truncated_xyz_keeps_earlier_frames(sample, tmp_path):
    first, second = frames(sample)
    path = tmp_path / "cut.xyz"
    path.write_text(first + second[: len(second) // 2].rsplit("\n", 1)[0] + "\n")
    good, failures = split(read_structures(path))
    assert len(good) == 1 and good[0].index == 0
    assert failures[0].index == 1 and failures[0].reason.startswith("truncated: count line")


@pytest.mark.parametrize("ext", ["xyz", "sdf", "ply"])
def test_empty_file(tmp_path, ext):
    path = tmp_path / f"empty.{ext}"
    path.write_bytes(b"")
    (failure,) = read_structures(path)
    assert failure.index is None and failure.reason == "empty file: no records"


@pytest.mark.parametrize("ext,message", [("xyz", "binary data, not XYZ text"), ("sdf", "binary data, not an SDF record"),
                                         ("ply", "not a PLY file")])
def test_binary_garbage(tmp_path, rng, ext, message):
    path = tmp_path / f"garbage.{ext}"
    path.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good, failures = split(read_structures(path))
    assert not good and failures and message in failures[0].reason


def sdf_records(sample, count):
    return (sample / "molecules.sdf").read_text().split("$$$$\n")[:count]


def test_sdf_with_one_broken_record_keeps_the_others(sample, tmp_path):
    records = sdf_records(sample, 5)
    lines = records[2].splitlines()
    lines[5] = lines[5][:20]  # cut an atom line short
    records[2] = "\n".join(lines) + "\n"
    path = tmp_path / "mixed.sdf"
    path.write_text("$$$$\n".join(records) + "$$$$\n")
    good, failures = split(read_structures(path))
    assert [g.index for g in good] == [0, 1, 3, 4]
    assert len(failures) == 1 and failures[0].index == 2
    assert failures[0].name == lines[0].strip()
    assert "Atom line too short" in failures[0].reason


def test_rdkit_messages_do_not_leak_to_stderr(sample, tmp_path, capfd):
    path = tmp_path / "broken.sdf"
    path.write_text("junk\n\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\n    0.0 0.0 C\nM  END\n$$$$\n")
    (failure,) = read_structures(path)
    assert isinstance(failure, Failure)
    assert capfd.readouterr().err == ""


def test_gzipped_sdf_and_corrupt_gzip(sample, tmp_path):
    text = "$$$$\n".join(sdf_records(sample, 4)) + "$$$$\n"
    good_gz = tmp_path / "ok.sdf.gz"
    good_gz.write_bytes(gzip.compress(text.encode()))
    good, failures = split(read_structures(good_gz))
    assert len(good) == 4 and not failures
    cut = tmp_path / "cut.sdf.gz"
    cut.write_bytes(gzip.compress(text.encode())[:-40])
    good, failures = split(read_structures(cut))
    assert len(failures) == 1 and "unreadable after" in failures[0].reason


def test_ply_with_broken_header(tmp_path):
    path = tmp_path / "broken.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                    "property flot z\nend_header\n0 0 0\n1 0 0\n0 1 0\n")
    (failure,) = read_structures(path)
    assert failure.reason.startswith("broken PLY: line 6") and len(failure.reason) <= 120


def test_missing_file_and_unknown_extension_stop_before_any_work(sample, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="no such file"):
        list(read_inputs([sample / "molecules.sdf", tmp_path / "missing.sdf"]))
    with pytest.raises(UsageError, match=r"unknown file extension '\.txt'"):
        list(read_inputs([tmp_path / "notes.txt"]))


@pytest.mark.parametrize("make,message,code", [
    (lambda d: d / "missing.sdf", "missing.sdf: no such file", 2),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "unknown file extension '.txt'", 2),
    (lambda d: d, "is a directory", 2),
])
def test_cli_usage_errors_are_one_line(tmp_path, make, message, code):
    result = runner.invoke(app, ["info", str(make(tmp_path))])
    assert result.exit_code == code
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", sorted(BAD_XYZ))
def test_cli_reports_bad_records_and_strict_fails(sample, tmp_path, case):
    text, message = BAD_XYZ[case]
    before, after = frames(sample)
    path = tmp_path / "mixed.xyz"
    path.write_text(before + text + after)
    relaxed = runner.invoke(app, ["info", str(path)])
    assert relaxed.exit_code == 0
    assert "records:       2 (1 failed)" in relaxed.stdout and message in relaxed.stdout
    strict = runner.invoke(app, ["info", str(path), "--strict"])
    assert strict.exit_code == 1
    assert "Traceback" not in relaxed.output + strict.output


def test_unknown_extension_lists_what_is_read_and_suggests_format_only_where_one_fits(sample, tmp_path):
    """A .cif (no reader fits): the formats groupae reads, no --format hint. An XYZ named .txt: the
    format it looks like, as the --format to pass."""
    (tmp_path / "crystal.cif").write_text("data_nacl\n_cell_length_a 5.64\n_symmetry_space_group_name_H-M 'F m -3 m'\n")
    shutil.copy(sample / "xyz" / "molecules_10.xyz", tmp_path / "frames.txt")
    no_fit = runner.invoke(app, ["info", str(tmp_path / "crystal.cif")])
    assert no_fit.exit_code == 2 and no_fit.stderr.count("\n") == 1
    assert "--format" not in no_fit.stderr
    assert all(kind in no_fit.stderr for kind in ("XYZ (.xyz, .extxyz)", "SDF/MOL (.sdf, .sd, .mol, .mdl)", "PLY (.ply)"))
    fits = runner.invoke(app, ["info", str(tmp_path / "frames.txt")])
    assert fits.exit_code == 2 and fits.stderr.count("\n") == 1 and "pass --format xyz" in fits.stderr
