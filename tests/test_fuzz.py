"""Property-based fuzzing of everything groupae reads (issue 14, deliverable 5).

Random bytes, truncations and byte mutations of valid files, for every reader (XYZ, SDF/MOL, PLY,
PDB, MOL2; plain and .gz), for checkpoints and for embed (HDF5) files, give only what README "Bad
input" documents: records or recorded failures from a reader; for a command, exit 0 or 1 (failed
records reported) or exit 2 with one line on stderr, never a traceback; never a hang (a watchdog
ends the test run with every thread's traceback if one example takes over WATCHDOG_S).

The default suite runs a few derandomized examples of each property (a few seconds in all); the
`slow` tests run many more (`pytest -m slow tests/test_fuzz.py`).
"""

import contextlib
import faulthandler
import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, same_geometry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.errors import Failure, UsageError
from groupae_cli.io import Structure, read_structures

runner = CliRunner()
WATCHDOG_S = 60
XYZ10 = SAMPLE / "xyz" / "molecules_10.xyz"
# no timing deadline: CI machines differ in speed, and slowness is not what these tests are about;
# a hang is (the watchdog)
FAST = settings(max_examples=10, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
SLOW = settings(FAST, max_examples=300)


@contextlib.contextmanager
def watchdog():
    """A hang of one example (in Python or in C: h5py, RDKit, torch) ends the run with tracebacks,
    not a stuck CI."""
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _seeds() -> dict[str, tuple[str, bytes]]:
    """name -> (extension, bytes of a valid file)."""
    from rdkit import Chem
    from test_align_formats import mol2_block

    molecules = [m for m in Chem.SDMolSupplier(str(SAMPLE / "molecules.sdf"), removeHs=False) if m is not None][:3]
    sdf = (SAMPLE / "molecules.sdf").read_bytes()
    return {
        "xyz": ("xyz", XYZ10.read_bytes()),
        "extxyz": ("extxyz", (SAMPLE / "xyz" / "molecules_10.extxyz").read_bytes()),
        "sdf": ("sdf", sdf),
        "mol": ("mol", Chem.MolToMolBlock(molecules[0]).encode()),
        "ply": ("ply", (SAMPLE / "point_clouds" / "cube.ply").read_bytes()),
        "pdb": ("pdb", "".join(Chem.MolToPDBBlock(m) for m in molecules).encode()),
        "mol2": ("mol2", "".join(mol2_block(m, -1, f"m{i}") for i, m in enumerate(molecules)).encode()),
    }


SEEDS = _seeds()


@st.composite
def hostile(draw, seed: bytes) -> bytes:
    """Random bytes, a truncation, or a few byte mutations (set, invert a window, insert, delete) of `seed`."""
    kind = draw(st.sampled_from(["random", "truncate", "mutate", "mutate", "mutate"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "truncate":
        return seed[: draw(st.integers(0, len(seed) - 1))]
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        how = draw(st.sampled_from(["set", "invert", "insert", "delete"]))
        if how == "set":
            data[at:at + 1] = bytes([draw(st.integers(0, 255))])
        elif how == "invert":
            width = draw(st.sampled_from([1, 8, 64]))
            data[at:at + width] = bytes(255 - b for b in data[at:at + width])
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


@st.composite
def hostile_structure_file(draw):
    """(extension, bytes, gzip'ed?) of a hostile structure file of any format."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    ext, seed = SEEDS[name]
    data = draw(hostile(seed))
    packed = draw(st.booleans())
    if packed:
        data = gzip.compress(data, mtime=0)
        if draw(st.booleans()):  # also a damaged gzip stream
            data = draw(hostile(data))
    return ext, data, packed


def _write(directory: Path, ext: str, data: bytes, packed: bool) -> Path:
    path = directory / (f"fuzz.{ext}.gz" if packed else f"fuzz.{ext}")
    path.write_bytes(data)
    return path


def _reads_only_records_and_failures(case) -> None:
    with watchdog(), tempfile.TemporaryDirectory() as directory:
        path = _write(Path(directory), *case)
        items = list(read_structures(path))
        same_geometry(path)  # embed's reading: the same records (their geometry) and failures
    assert items, "a reader gives at least one record or failure"
    for item in items:
        assert isinstance(item, (Structure, Failure)), item
        if isinstance(item, Failure):
            assert item.source == str(path) and item.reason and "\n" not in item.reason.strip(), item
        else:
            assert np.isfinite(item.positions).all() and len(item.positions) >= 2


def one_line_or_reported(result) -> None:
    """Exit 0/1 (records read, failures reported), or exit 2 with one line; never a traceback."""
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("groupae: error: "), result.stderr


@FAST
@given(case=hostile_structure_file())
def test_readers_give_records_or_failures_on_hostile_bytes(case):
    _reads_only_records_and_failures(case)


@pytest.mark.slow
@SLOW
@given(case=hostile_structure_file())
def test_readers_give_records_or_failures_on_hostile_bytes_long(case):
    _reads_only_records_and_failures(case)


def _info_on_structures(case) -> None:
    with watchdog(), tempfile.TemporaryDirectory() as directory:
        path = _write(Path(directory), *case)
        one_line_or_reported(runner.invoke(app, ["info", str(path)]))


@FAST
@given(case=hostile_structure_file())
def test_info_on_hostile_structure_files_is_a_summary_or_one_line(case):
    _info_on_structures(case)


def _embed(checkpoint, case) -> None:
    with watchdog(), tempfile.TemporaryDirectory() as directory:
        path = _write(Path(directory), *case)
        out = Path(directory) / "out.h5"
        result = runner.invoke(app, ["embed", str(path), "-o", str(out), "--model", str(checkpoint),
                                     "--device", "cpu", "-q"])
        one_line_or_reported(result)
        assert out.exists() == (result.exit_code == 0)
        assert [p.name for p in Path(directory).iterdir() if ".partial" in p.name] == []


@settings(FAST, max_examples=4)
@given(case=hostile_structure_file())
def test_embed_of_hostile_structure_files_writes_a_file_or_fails_in_one_line(checkpoint, case):
    _embed(checkpoint, case)


@pytest.mark.slow
@settings(SLOW, max_examples=100)
@given(case=hostile_structure_file())
def test_embed_of_hostile_structure_files_long(checkpoint, case):
    _embed(checkpoint, case)


# --- checkpoints ---------------------------------------------------------------------------------

def _load(checkpoint, data: bytes) -> None:
    from groupae_cli.io.checkpoint import load_model

    with watchdog(), tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.ckpt"
        path.write_bytes(data)
        try:
            model = load_model(path)
        except UsageError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
        else:  # a mutation the zip format does not notice (inside a tensor's bytes) is a valid checkpoint
            import torch

            assert all(torch.isfinite(p).all() for p in model.parameters() if p.is_floating_point())
        one_line_or_reported(runner.invoke(app, ["info", str(path)]))


@FAST
@given(data=st.data())
def test_hostile_checkpoints_load_or_fail_in_one_line(checkpoint, data):
    _load(checkpoint, data.draw(hostile(checkpoint.read_bytes())))


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_hostile_checkpoints_long(checkpoint, data):
    _load(checkpoint, data.draw(hostile(checkpoint.read_bytes())))


# --- embed files (HDF5) --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz_embedded") / "ten.h5"
    result = runner.invoke(app, ["embed", str(XYZ10), "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    return out


def _hdf5(checkpoint, data: bytes) -> None:
    with watchdog(), tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.h5"
        path.write_bytes(data)
        one_line_or_reported(runner.invoke(app, ["info", str(path)]))
        out = Path(directory) / "out.xyz"
        result = runner.invoke(app, ["reconstruct", str(path), "-o", str(out), "--model", str(checkpoint),
                                     "--device", "cpu"])
        one_line_or_reported(result)
        assert out.exists() == (result.exit_code == 0)
        assert [p.name for p in Path(directory).iterdir() if ".partial" in p.name] == []


@FAST
@given(data=st.data())
def test_hostile_embed_files_are_read_or_refused_in_one_line(checkpoint, embedded, data):
    _hdf5(checkpoint, data.draw(hostile(embedded.read_bytes())))


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_hostile_embed_files_long(checkpoint, embedded, data):
    _hdf5(checkpoint, data.draw(hostile(embedded.read_bytes())))


def _global_heap_objects(data: bytes) -> list[int]:
    """Byte offsets of the objects of the file's first global heap collection (8-byte lengths)."""
    start = data.find(b"GCOL\x01\x00\x00\x00")
    end = start + int.from_bytes(data[start + 8:start + 16], "little")
    offsets, p = [], start + 16
    while p + 16 <= end:
        index, size = int.from_bytes(data[p:p + 2], "little"), int.from_bytes(data[p + 8:p + 16], "little")
        if index == 0:
            break
        offsets.append(p)
        p += 16 + (size + 7) // 8 * 8
    return offsets


@pytest.mark.parametrize("size", [2**64 - 20, 2**64 - 16])
def test_an_embed_file_with_a_corrupt_global_heap_is_refused_not_a_hang(checkpoint, embedded, tmp_path, size):
    """HDF5 (2.0) loops for ever reading a string from a global heap collection whose object sizes
    are corrupt (found by this fuzzing: 64 bytes inverted in an embed file's attribute strings made
    `info` and `reconstruct` hang); groupae walks the collections first and refuses the file."""
    data = bytearray(embedded.read_bytes())
    objects = _global_heap_objects(bytes(data))
    assert len(objects) > 2
    data[objects[1] + 8:objects[1] + 16] = size.to_bytes(8, "little")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(data))
    commands = (["info", str(bad)],
                ["reconstruct", str(bad), "-o", str(tmp_path / "out.xyz"), "--model", str(checkpoint), "--device", "cpu"])
    for args in commands:
        with watchdog():
            result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        one_line_or_reported(result)
        assert str(bad) in result.stderr and "global heap" in result.stderr
    assert not (tmp_path / "out.xyz").exists()


def test_the_fuzz_strategies_reach_every_format_and_gzip():
    """Test the test: the strategy draws every format, plain and gzip'ed, and every kind of damage."""
    from hypothesis import find

    for name in SEEDS:
        for packed in (False, True):
            find(hostile_structure_file(), lambda c, n=name, p=packed: c[0] == SEEDS[n][0] and c[2] == p,
                 settings=settings(derandomize=True, database=None, max_examples=2000))


def test_a_damaged_deflate_block_is_a_failure_not_a_traceback(tmp_path):
    """Found by this fuzzing: zlib.error (not OSError) from a .gz with a broken deflate block was a
    traceback in `info` and `embed`."""
    bad = tmp_path / "z.xyz.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03" + bytes(10))
    [failure] = list(read_structures(bad))
    assert isinstance(failure, Failure) and "unreadable" in failure.reason
    result = runner.invoke(app, ["info", str(bad)])
    one_line_or_reported(result)
    assert result.exit_code != 0 or "unreadable" in result.output


def test_an_attribute_that_is_not_utf8_is_printed_not_a_traceback(checkpoint, embedded, tmp_path):
    """Found by this fuzzing: a damaged byte in a string attribute (h5py keeps it as a surrogate)
    made `info` fail on printing it (UnicodeEncodeError, a traceback); it is shown as U+FFFD."""
    data = embedded.read_bytes()
    stored = str(checkpoint).encode()
    assert data.count(stored) >= 1
    bad = tmp_path / "bad.h5"
    bad.write_bytes(data.replace(stored, b"\xd0" + stored[1:]))
    with watchdog():
        result = runner.invoke(app, ["info", str(bad)])
    one_line_or_reported(result)
    assert result.exit_code == 0 and f"\ufffd{str(checkpoint)[1:]}" in result.stdout
