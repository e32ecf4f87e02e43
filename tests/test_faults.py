"""Faults and hostile inputs (issue 14): full disks, kills, malformed checkpoints and HDF5 files.

Every fault ends in one line on stderr naming the file, exit code 2 (1 for records that all
failed), nothing under the final name and no temporary file left behind.
"""

import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from conftest import SAMPLE
from typer.testing import CliRunner

from groupae_cli.app import app

runner = CliRunner()
MOLECULES = str(SAMPLE / "molecules.sdf")


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
    result = runner.invoke(app, ["embed", MOLECULES, "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "-q"])
    assert result.exit_code == 2
    one_line_error(result, str(out), "No space left on device")
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
                           "--device", "cpu", "-q"], capture_output=True, text=True, env=env, timeout=120)
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
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.h5.partial-{int(dead.stdout)}"
    stale.write_bytes(b"\0" * 1000)
    alive = tmp_path / f".out.h5.partial-{os.getppid()}"  # a running process's file is left alone
    alive.write_bytes(b"\0")
    result = runner.invoke(app, ["embed", MOLECULES, "-o", str(tmp_path / "out.h5"), "--model", str(checkpoint),
                                 "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.exists()
