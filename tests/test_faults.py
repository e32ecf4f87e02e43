"""Faults and hostile inputs (issue 14): full disks, kills, malformed checkpoints and HDF5 files.

Every fault ends in one line on stderr naming the file, exit code 2 (1 for records that all
failed), nothing under the final name and no temporary file left behind.
"""

import errno
import importlib
import os
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import h5py
import pytest
from conftest import SAMPLE
from typer.testing import CliRunner

from groupae_cli.app import app

runner = CliRunner()
MOLECULES = str(SAMPLE / "molecules.sdf")
XYZ10 = str(SAMPLE / "xyz" / "molecules_10.xyz")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial" in p.name)


def one_line_error(result, *words) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("groupae: error: "), result.stderr
    assert [line for line in lines if "Traceback" in line] == [], result.stderr
    for word in words:
        assert word in lines[-1], lines[-1]


def full_disk(monkeypatch, free: int = 1 << 20) -> None:
    """The output's file system has `free` bytes left (what shutil.disk_usage reports)."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - free, free))


# --- embed: full disk, bad output paths, every record failing -------------------------------------

def test_embed_on_a_full_disk_stops_with_one_line_and_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    full_disk(monkeypatch)
    out = tmp_path / "out.h5"
    result = runner.invoke(app, ["embed", XYZ10, "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "-q"])
    assert result.exit_code == 2
    one_line_error(result, str(out), "No space left on device (1 MiB free")
    assert not out.exists() and leftovers(tmp_path) == []


def test_embed_when_hdf5_itself_fails_to_write(checkpoint, tmp_path, monkeypatch):
    """A write error inside h5py (a disk that fills between the space check and the write)."""
    import h5py

    def no_space(self, *args):
        raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28)")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", no_space)
    out = tmp_path / "out.h5"
    result = runner.invoke(app, ["embed", MOLECULES, "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "-q"])
    assert result.exit_code == 2
    one_line_error(result, str(out), "No space left on device")
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.slow  # a process of its own (about 6 s); the in-process tests above inject the same faults
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_embed_past_a_file_size_limit_exits_2_instead_of_crashing(checkpoint, tmp_path):
    """A real failing write inside HDF5 (EFBIG under RLIMIT_FSIZE, as ENOSPC on a full disk): it
    aborted the process at C level (heap corruption, segfault) with the partial file left behind."""
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000))\n"
              "from groupae_cli.app import app\n"
              "sys.argv = ['groupae'] + sys.argv[1:]\n"
              "app()\n")
    out = tmp_path / "out.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, "embed", MOLECULES, "-o", str(out), "--model", str(checkpoint),
                           "--device", "cpu", "-q"], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f"groupae: error: {out}: cannot write: File too large"
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["directory", "missing"])
def test_embed_to_an_unwritable_place_is_one_line(checkpoint, tmp_path, where):
    out = tmp_path / "out.h5"
    if where == "directory":
        out.mkdir()
    else:
        out = tmp_path / "nosuch" / "out.h5"
    result = runner.invoke(app, ["embed", MOLECULES, "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "-q"])
    assert result.exit_code == 2
    one_line_error(result, str(out))
    assert leftovers(tmp_path) == []


def test_embed_with_every_record_failing_writes_nothing_and_exits_1(checkpoint, tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\nfirst\nC 0 0 0\nC 0 0 0\n2\nsecond\nQq 0 0 0\nC 1 0 0\n")
    out = tmp_path / "out.h5"
    result = runner.invoke(app, ["embed", str(bad), "-o", str(out), "--model", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 1
    assert "2 records skipped" in result.stderr
    one_line_error(result, str(out), "not written")
    assert not out.exists() and leftovers(tmp_path) == []


def test_stale_partial_files_of_dead_processes_are_removed(checkpoint, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)
    stale = tmp_path / f".out.h5.partial-{int(dead.stdout)}"
    stale.write_bytes(b"\0" * 1000)
    alive = tmp_path / f".out.h5.partial-{os.getppid()}"  # a running process's file is left alone
    alive.write_bytes(b"\0")
    result = runner.invoke(app, ["embed", XYZ10, "-o", str(tmp_path / "out.h5"), "--model", str(checkpoint),
                                 "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.exists()


# --- train: atomic run files, the kill-during-resume race, resume checks ----------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-epoch run of a tiny model on 10 sample molecules."""
    from groupae_cli.models import preset
    from groupae_cli.train import TrainConfig, train_from_files

    run = tmp_path_factory.mktemp("run") / "run"
    train_from_files([XYZ10], run, preset("tiny"), TrainConfig(epochs=2, batch_size=8, seed=1), device="cpu", quiet=True)
    return run


def copy_run(run_dir, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def test_a_resume_killed_while_writing_config_yaml_still_resumes(run_dir, tmp_path):
    """An empty config.yaml (a kill mid-write, before it was written atomically) made the next
    resume write the default preset and `inputs: []` and crash on a size mismatch."""
    import yaml

    from groupae_cli.io.checkpoint import read_checkpoint

    run = copy_run(run_dir, tmp_path)
    before = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text("")
    result = runner.invoke(app, ["train", "-o", str(run), "--resume", "--epochs", "3", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    after = yaml.safe_load((run / "config.yaml").read_text())
    assert after["model"] == before["model"] and after["inputs"] == before["inputs"] == [XYZ10]
    assert after["train"] == {**before["train"], "epochs": 3}
    assert read_checkpoint(run / "last.ckpt")["training"]["epoch"] == 3
    assert leftovers(run) == []


def test_resume_to_fewer_epochs_than_done_is_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    config = (run / "config.yaml").read_text()
    result = runner.invoke(app, ["train", "-o", str(run), "--resume", "--epochs", "1", "--device", "cpu", "-q"])
    assert result.exit_code == 2
    one_line_error(result, str(run), "2 epochs done")
    assert (run / "config.yaml").read_text() == config


def test_train_on_a_full_disk_leaves_no_truncated_cache(tmp_path, monkeypatch):
    import numpy as np

    real = np.savez

    def savez_then_full(file, **arrays):
        real(file, **arrays)  # the bytes are written, then the disk fills
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez_then_full)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", XYZ10, "-o", str(run), "--preset", "tiny", "--epochs", "1", "--device", "cpu", "-q"])
    assert result.exit_code == 2
    one_line_error(result, str(run / "cache.npz"), "No space left on device")
    assert not (run / "cache.npz").exists() and leftovers(run) == []


def test_train_into_a_file_is_one_line(tmp_path):
    target = tmp_path / "run"
    target.write_text("a file")
    result = runner.invoke(app, ["train", XYZ10, "-o", str(target), "--preset", "tiny", "--epochs", "1", "--device", "cpu"])
    assert result.exit_code == 2
    one_line_error(result, str(target))


def test_one_molecule_is_trained_on_not_held_out(sample):
    from groupae_cli.io import read_structures
    from groupae_cli.train.dataset import StructureSet

    data = StructureSet.from_structures(list(read_structures(sample / "same" / "molecule.sdf")))
    train, validation = data.split(0.1, seed=0)
    assert train.tolist() == [0] and validation.tolist() == []


# --- malformed checkpoints -------------------------------------------------------------------------

def _broken(payload: dict, case: str) -> dict:
    import torch

    from groupae_cli.models import GroupAE, preset

    payload = dict(payload)
    if case == "format_version str":
        payload["format_version"] = "1"
    elif case == "format_version None":
        payload["format_version"] = None
    elif case == "format_version 0":
        payload["format_version"] = 0
    elif case in ("config", "state_dict"):
        del payload[case]
    elif case == "another config":
        payload["state_dict"] = GroupAE(preset("tiny", embedding_dim=6)).state_dict()
    elif case == "integer weights":
        payload["state_dict"] = {k: v.long() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    elif case == "NaN weights":
        payload["state_dict"] = {k: v.clone() for k, v in payload["state_dict"].items()}
        first = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel())
        payload["state_dict"][first].view(-1)[0] = torch.nan
    return payload


CHECKPOINT_FAULTS = {
    "0 bytes": "not a groupae checkpoint",
    "format_version str": "format_version '1'",
    "format_version None": "format_version None",
    "format_version 0": "format_version 0",
    "config": "'config' missing",
    "state_dict": "'state_dict' missing",
    "another config": "weights do not fit",
    "integer weights": "torch.int64",
    "NaN weights": "NaN or Inf",
}


@pytest.mark.parametrize("case", list(CHECKPOINT_FAULTS))
def test_malformed_checkpoints_are_one_line(checkpoint, tmp_path, case):
    import torch

    bad = tmp_path / "bad.ckpt"
    if case == "0 bytes":
        bad.write_bytes(b"")
    else:
        torch.save(_broken(torch.load(checkpoint, weights_only=True), case), bad)
    out = tmp_path / "out.h5"
    result = runner.invoke(app, ["embed", MOLECULES, "-o", str(out), "--model", str(bad), "--device", "cpu", "-q"])
    assert result.exit_code == 2
    one_line_error(result, str(bad), CHECKPOINT_FAULTS[case])
    assert not out.exists()


# --- embed and reconstruct: NaN out of the model, hostile HDF5 inputs, outputs over inputs ------------

def test_a_nan_embedding_is_a_failed_record_not_a_result(checkpoint, tmp_path, monkeypatch):
    import numpy as np

    from groupae_cli.io.hdf5 import describe

    embed_module = importlib.import_module("groupae_cli.embed")  # the package's `embed` is the API function

    real = embed_module.encode_batch

    def second_nan(model, structures, device):
        result = real(model, structures, device)
        result["embedding"][1] = np.nan
        return result

    monkeypatch.setattr(embed_module, "encode_batch", second_nan)
    out = tmp_path / "out.h5"
    result = runner.invoke(app, ["embed", XYZ10, "-o", str(out), "--model", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    described = describe(out)
    assert described["attrs"]["n_records"] == 9
    assert [f["source_index"] for f in described["failed"]] == [1]
    assert "NaN" in described["failed"][0]["reason"]


def test_a_nan_reconstruction_is_a_failed_record(checkpoint, tmp_path, monkeypatch):
    import numpy as np

    reconstruct_module = importlib.import_module("groupae_cli.reconstruct")
    real = reconstruct_module.reconstruct

    def first_nan(model, structures, device):
        results = real(model, structures, device)
        results[0].structure.positions[:] = np.nan
        return results

    monkeypatch.setattr(reconstruct_module, "reconstruct", first_nan)
    out = tmp_path / "out.xyz"
    result = runner.invoke(app, ["reconstruct", XYZ10, "-o", str(out), "--model", str(checkpoint), "--device", "cpu",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert "NaN" in result.stderr and len(json_records(result)) == 9


def json_records(result) -> list:
    import json

    return json.loads(result.stdout)["records"]


@pytest.fixture(scope="module")
def embedded(checkpoint, tmp_path_factory):
    """An embed file of the 10 sample XYZ molecules, written with the tiny checkpoint."""
    out = tmp_path_factory.mktemp("embedded") / "ten.h5"
    result = runner.invoke(app, ["embed", XYZ10, "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    return out


def _hostile(embedded: Path, target: Path, case: str) -> None:
    import h5py
    import numpy as np

    data = embedded.read_bytes()
    if case == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif case == "corrupted":
        target.write_bytes(data[:512] + bytes(255 - b for b in data[512:4096]) + data[4096:])
    elif case == "corrupted object header":  # h5py raised KeyError or RuntimeError (not OSError) here
        target.write_bytes(data[:640] + bytes(255 - b for b in data[640:704]) + data[704:])
    elif case == "foreign":
        with h5py.File(target, "w") as f:
            f["x"] = np.arange(10)
    else:
        shutil.copy(embedded, target)
        with h5py.File(target, "r+") as f:
            if case == "incomplete":
                f.attrs["complete"] = False
            elif case == "offsets":
                f["offsets"][3] = 10_000
            elif case == "no permutation":
                del f["permutation"]


HDF5_FAULTS = {"truncated": "not a readable", "corrupted": "not a readable",
               "corrupted object header": "embed file", "foreign": "embedding_dim",
               "incomplete": "not marked complete", "offsets": "offsets", "no permutation": "'permutation'"}


@pytest.mark.parametrize("case", list(HDF5_FAULTS))
def test_hostile_hdf5_given_to_reconstruct_is_one_line(checkpoint, embedded, tmp_path, case):
    bad = tmp_path / "bad.h5"
    _hostile(embedded, bad, case)
    out = tmp_path / "out.xyz"
    result = runner.invoke(app, ["reconstruct", str(bad), "-o", str(out), "--model", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 2
    one_line_error(result, str(bad), HDF5_FAULTS[case])
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["truncated", "corrupted", "corrupted object header"])
def test_hostile_hdf5_given_to_info_is_one_line(embedded, tmp_path, case):
    bad = tmp_path / "bad.h5"
    _hostile(embedded, bad, case)
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 2
    one_line_error(result, str(bad))


def test_an_embed_file_of_another_model_is_refused(embedded, tmp_path):
    import torch

    from groupae_cli.io.checkpoint import save_checkpoint
    from groupae_cli.models import GroupAE, preset

    torch.manual_seed(1)
    other = tmp_path / "other.ckpt"
    save_checkpoint(other, GroupAE(preset("tiny")))
    out = tmp_path / "out.xyz"
    result = runner.invoke(app, ["reconstruct", str(embedded), "-o", str(out), "--model", str(other), "--device", "cpu"])
    assert result.exit_code == 2
    one_line_error(result, str(embedded), "written by model")
    assert not out.exists()


def test_an_embed_file_of_the_previous_default_model_names_it(tmp_path):
    """After the default model changed: a file the previous one wrote says which shipped model decodes it."""
    source = tmp_path / "three.sdf"
    source.write_text("$$$$\n".join((SAMPLE / "molecules.sdf").read_text().split("$$$$\n")[:3]) + "$$$$\n")
    embedded = tmp_path / "old.h5"
    assert runner.invoke(app, ["embed", str(source), "-o", str(embedded), "--model", "default-v1", "--quiet"]).exit_code == 0
    out = tmp_path / "out.xyz"
    result = runner.invoke(app, ["reconstruct", str(embedded), "-o", str(out), "--quiet"])
    assert result.exit_code == 2
    one_line_error(result, str(embedded), "it is the shipped model 'default-v1': --model default-v1")
    assert not out.exists()
    result = runner.invoke(app, ["reconstruct", str(embedded), "-o", str(out), "--quiet", "--model", "default-v1"])
    assert result.exit_code == 0 and out.exists()


def test_a_nan_record_in_an_embed_file_is_a_failed_record(checkpoint, embedded, tmp_path):
    import h5py
    import numpy as np

    bad = tmp_path / "nan.h5"
    shutil.copy(embedded, bad)
    with h5py.File(bad, "r+") as f:
        f["embedding"][4] = np.nan
    out = tmp_path / "out.xyz"
    result = runner.invoke(app, ["reconstruct", str(bad), "-o", str(out), "--model", str(checkpoint), "--device", "cpu",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert [r["index"] for r in json_records(result)] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert "NaN" in result.stderr


def test_reconstruct_never_overwrites_its_input_nor_writes_into_a_directory(checkpoint, tmp_path):
    source = tmp_path / "in.xyz"
    shutil.copy(XYZ10, source)
    before = source.read_bytes()
    same = runner.invoke(app, ["reconstruct", str(source), "-o", str(source), "--model", str(checkpoint), "--device", "cpu"])
    assert same.exit_code == 2
    one_line_error(same, "is also an input")
    assert source.read_bytes() == before
    (tmp_path / "dir.xyz").mkdir()
    into = runner.invoke(app, ["reconstruct", str(source), "-o", str(tmp_path / "dir.xyz"), "--model", str(checkpoint)])
    assert into.exit_code == 2
    one_line_error(into, "is a directory")
    assert leftovers(tmp_path) == []


def test_reconstruct_on_a_full_disk_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    from groupae_cli.io import xyz

    real = xyz.write_xyz

    def then_full(structures, out, *args):
        real(structures, out, *args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(xyz, "write_xyz", then_full)
    out = tmp_path / "out.xyz"
    result = runner.invoke(app, ["reconstruct", XYZ10, "-o", str(out), "--model", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 2
    one_line_error(result, str(out), "No space left on device")
    assert not out.exists() and leftovers(tmp_path) == []


# --- readers: memory bounded by a record limit, not by the file ---------------------------------------

@pytest.mark.parametrize("ext", ["sdf", "xyz"])
def test_a_file_of_zeros_is_read_in_bounded_memory(tmp_path, ext):
    """40 MB of zeros without a newline: it was one line, held whole (and decoded: 3-4x that)."""
    import tracemalloc

    from groupae_cli.io import read_structures

    path = tmp_path / f"zeros.{ext}"
    with open(path, "wb") as f:
        f.truncate(40 << 20)
    tracemalloc.start()
    try:
        items = list(read_structures(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(items) == 1 and "binary data" in items[0].reason
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"


@pytest.mark.parametrize("ext", ["sdf", "xyz", "ply"])
def test_a_record_over_the_size_limit_is_skipped_and_the_rest_read(tmp_path, monkeypatch, ext):
    import numpy as np

    from groupae_cli.io import read_structures, write_structures

    module = importlib.import_module(f"groupae_cli.io.{ext}")
    if ext == "ply":
        small = SAMPLE / "same" / "molecule.ply"
        big = tmp_path / "big.ply"
        write_structures(list(read_structures(SAMPLE / "point_clouds" / "sphere.ply")), big)
        assert big.stat().st_size > 6000 > small.stat().st_size
        monkeypatch.setattr(module, "MAX_RECORD_BYTES", 6000)
        assert "record larger than" in next(iter(read_structures(big))).reason
        assert len(next(iter(read_structures(small)))) > 0
        return
    monkeypatch.setattr(module, "MAX_RECORD_BYTES", 6000)
    structures = list(read_structures(MOLECULES))
    big = max(structures[:20], key=len)
    repeated = [big.__class__(np.tile(big.numbers, 4), np.concatenate([big.positions + [20.0 * k, 0, 0] for k in range(4)]),
                              "big", big.source, 0)]
    path = tmp_path / f"mixed.{ext}"
    write_structures([structures[0], *repeated, structures[1]], path)
    items = list(read_structures(path))
    assert [getattr(i, "name", None) for i in items[::2]] == [structures[0].name, structures[1].name]
    assert "record larger than" in items[1].reason and items[1].index == 1


def test_ply_with_a_binary_header_over_an_ascii_body_is_a_failure(tmp_path):
    from groupae_cli.io import read_structures
    from groupae_cli.io.ply import write_ply

    (molecule,) = read_structures(SAMPLE / "same" / "molecule.ply")
    text = tmp_path / "text.ply"
    write_ply(molecule, text, text=True)
    lying = tmp_path / "lying.ply"
    lying.write_bytes(text.read_bytes().replace(b"format ascii 1.0", b"format binary_little_endian 1.0"))
    (item,) = read_structures(lying)
    assert "format does not match the body" in item.reason
    (again,) = read_structures(text)
    assert len(again) == len(molecule)


def test_a_negative_atomic_number_is_not_an_element(tmp_path):
    import numpy as np

    from groupae_cli.io import read_structures
    from groupae_cli.io.ply import write_ply

    (molecule,) = read_structures(SAMPLE / "same" / "molecule.ply")
    numbers = molecule.numbers.copy()
    numbers[2] = -5
    path = tmp_path / "negative.ply"
    from plyfile import PlyData, PlyElement

    vertex = np.empty(len(numbers), dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"), ("atomic_number", "i1")])
    for k, c in enumerate("xyz"):
        vertex[c] = molecule.positions[:, k]
    vertex["atomic_number"] = numbers
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))
    (item,) = read_structures(path)
    assert item.reason == "atomic number -5 at atom 2 is not an element (1-118, 0 a point)"
    assert write_ply  # the writer's own files carry unsigned numbers


def test_reconstruct_writes_records_as_they_are_decoded(checkpoint, tmp_path, monkeypatch):
    """Memory flat in the number of records: it held every decoded structure until the end."""
    from groupae_cli.io import xyz

    reconstruct_module = importlib.import_module("groupae_cli.reconstruct")
    written, written_before_batch = [], []
    real_write, real_decode = xyz.write_xyz, reconstruct_module.reconstruct

    def counting_write(structures, out, *args):
        def counted():
            for s in structures:
                written.append(s.name)
                yield s
        return real_write(counted(), out, *args)

    def spying_decode(model, structures, device):
        written_before_batch.append(len(written))
        return real_decode(model, structures, device)

    monkeypatch.setattr(xyz, "write_xyz", counting_write)
    monkeypatch.setattr(reconstruct_module, "reconstruct", spying_decode)
    result = runner.invoke(app, ["reconstruct", XYZ10, "-o", str(tmp_path / "out.xyz"), "--model", str(checkpoint),
                                 "--device", "cpu", "--batch-size", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert len(written) == 10 and written_before_batch == [0, 2, 4, 6, 8]


@pytest.mark.slow  # a process of its own that trains (about 11 s)
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_train_past_a_file_size_limit_exits_2_with_the_run_intact(tmp_path):
    """torch.save on a full disk raised RuntimeError ('unexpected pos ...'): a traceback."""
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (150000, 150000))\n"
              "from groupae_cli.app import app\n"
              "sys.argv = ['groupae'] + sys.argv[1:]\n"
              "app()\n")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script, "train", XYZ10, "-o", str(run), "--preset", "tiny",
                           "--epochs", "1", "--device", "cpu", "-q"], check=False, capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"groupae: error: {run / 'best.ckpt'}: cannot write: File too large"]
    assert sorted(os.listdir(run)) == ["cache.npz", "config.yaml", "metrics.csv", "split.json"]


def test_align_output_into_a_directory_is_one_line(tmp_path):
    target = tmp_path / "aligned.sdf"
    target.mkdir()
    a, b = SAMPLE / "align" / "a.sdf", SAMPLE / "align" / "b.sdf"
    result = runner.invoke(app, ["align", str(a), str(b), "-o", str(target)])
    assert result.exit_code == 2
    one_line_error(result, str(target), "is a directory")  # checked before any work, as embed and reconstruct do
    assert leftovers(tmp_path) == []


def test_align_no_refine_refuses_different_compositions(checkpoint, tmp_path):
    """It mapped C onto N and printed an RMSD (issue 14, item 3; already refused when this test came)."""
    (tmp_path / "cn.xyz").write_text("2\nCN\nC 0 0 0\nN 1.2 0 0\n")
    (tmp_path / "cc.xyz").write_text("2\nCC\nC 0 0 0\nC 1.3 0 0\n")
    result = runner.invoke(app, ["align", str(tmp_path / "cn.xyz"), str(tmp_path / "cc.xyz"), "--no-refine",
                                 "--model", str(checkpoint), "--device", "cpu"])
    assert result.exit_code == 2 and "RMSD" not in result.stdout
    assert "different compositions" in result.stderr


def test_failures_are_written_in_input_order_whatever_the_batch_size(checkpoint, tmp_path, monkeypatch):
    """A NaN found when a batch is encoded goes into the failed table at its record's place, before
    failures read after it; so the table is the same for every batch size (and merges by input order)."""
    embed_module = importlib.import_module("groupae_cli.embed")
    real = embed_module.encode_batch

    def nan_for_the_third(model, structures, device):
        result = real(model, structures, device)
        for k, s in enumerate(structures):
            if s.index == 2:
                result["embedding"][k] = float("nan")
        return result

    monkeypatch.setattr(embed_module, "encode_batch", nan_for_the_third)
    bad = tmp_path / "bad.xyz"
    frames = Path(XYZ10).read_text()
    bad.write_text(frames + "3\n\nC 0 0 0\nX 1 1 1\n")  # a bad record (unknown element) after the NaN one
    tables = []
    for size in ("1", "4", "64"):
        out = tmp_path / f"out{size}.h5"
        result = runner.invoke(app, ["embed", str(bad), "-o", str(out), "--model", str(checkpoint), "--device", "cpu",
                                     "--batch-size", size, "--quiet"])
        assert result.exit_code == 0, result.output
        with h5py.File(out) as f:
            tables.append([(int(r["source_index"]), r["reason"].decode()[:20]) for r in f["failed"][:]])
    assert [index for index, _ in tables[0]] == [2, 10]
    assert tables[0] == tables[1] == tables[2]


def test_a_shard_that_embeds_nothing_still_writes_its_part(checkpoint, tmp_path):
    out = tmp_path / "part.h5"
    one = tmp_path / "one.xyz"
    one.write_text("\n".join(Path(XYZ10).read_text().splitlines()[:2 + int(Path(XYZ10).read_text().split()[0])]) + "\n")
    result = runner.invoke(app, ["embed", str(one), "-o", str(out), "--model", str(checkpoint), "--device", "cpu",
                                 "--shard", "1/2"])
    assert result.exit_code == 0, result.output
    assert "0 records embedded" in result.output and "shard 1/2" in result.output
    with h5py.File(out) as f:
        assert f.attrs["complete"] and f.attrs["n_records"] == 0 and f.attrs["shard"] == "1/2"


# --- workers outlive nothing ------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel ends the workers with their parent on Linux")
def test_embed_killed_outright_leaves_no_worker_behind(checkpoint, tmp_path):
    """A main process killed with SIGKILL cannot stop its workers; the kernel does
    (`early_worker.become_worker`). They stayed, blocked for good on a full queue, each holding a
    model."""
    big = tmp_path / "big.sdf"
    big.write_text(Path(MOLECULES).read_text() * 10)
    run = subprocess.Popen([sys.executable, "-m", "groupae_cli", "embed", str(big), "-o", str(tmp_path / "out.h5"),
                            "--model", str(checkpoint), "--device", "cpu", "--workers", "2", "-q"],
                           stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while len(children(run.pid)) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children(run.pid)
    run.kill()
    run.wait()
    assert len(workers) >= 2
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if running(pid)]
    for pid in left:  # not to leave them behind either way
        os.kill(pid, 9)
    assert left == []


def test_holding_a_frame_free_part_the_model_lacks_is_one_line(checkpoint, tmp_path):
    """--fit-hold-identity with a model whose z has no separate frame-free part (the tiny mean-pooled
    one: embedding_identity 0) would move the whole z while the file said part was held: one line
    naming the model, nothing written, whether embed's workers or its own process load the model,
    and in reconstruct; from Python, a ValueError. The whole-z fit of that model still runs."""
    import groupae_cli as g
    from groupae_cli.io import read_structures

    for command, out, workers in (("embed", "w.h5", ["--workers", "2"]), ("embed", "m.h5", ["--workers", "0"]),
                                  ("reconstruct", "r.xyz", [])):
        result = runner.invoke(app, [command, XYZ10, "-o", str(tmp_path / out), "--model", str(checkpoint),
                                     "--fit-steps", "2", "--fit-hold-identity", "--quiet", *workers])
        assert result.exit_code == 2, result.output
        one_line_error(result, str(checkpoint), "nothing to hold", "--fit-whole-z")
        assert not (tmp_path / out).exists() and not leftovers(tmp_path)
    model = g.load_model(str(checkpoint), device="cpu")
    model.fit_steps, model.fit_hold_identity = 2, True
    structures = list(read_structures(XYZ10))[:2]
    with pytest.raises(ValueError, match="nothing to hold"):
        g.embed(model, structures)
    model.fit_hold_identity = False
    assert len(g.embed(model, structures)) == 2
