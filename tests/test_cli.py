"""The command-line shell: help, version, info on every format, stdin, and a light start-up."""

import json
import subprocess
import sys

from conftest import SAMPLE
from rdkit import Chem
from typer.testing import CliRunner

from groupae_cli import __version__
from groupae_cli.app import app

runner = CliRunner()


def test_help_lists_working_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "info" in result.stdout
    bare = runner.invoke(app, [])  # no_args_is_help: the help, as a usage error
    assert bare.exit_code == 2 and "Commands" in bare.output and "info" in bare.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"groupae {__version__}"


def test_help_imports_no_heavy_library():
    code = ("import sys; from groupae_cli.app import app; "
            "print(sorted(m for m in ('torch', 'rdkit', 'h5py', 'e3nn', 'ase', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_info_on_sdf_counts_what_rdkit_counts(sample):
    path = sample / "molecules.sdf"
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    mols = [m for m in Chem.SDMolSupplier(str(path), removeHs=False)]
    sizes = sorted(m.GetNumAtoms() for m in mols)
    assert info["records"] == len(mols) and info["failed"] == 0
    assert info["atoms_per_record"]["min"] == sizes[0] and info["atoms_per_record"]["max"] == sizes[-1]
    assert info["records_with_bonds"] == len(mols)
    assert info["elements"]["H"] == sum(a.GetAtomicNum() == 1 for m in mols for a in m.GetAtoms())


def test_info_human_output_on_each_format(sample):
    for rel, expect in [("xyz/molecules_10.xyz", "records:       10 (0 failed)"),
                        ("point_clouds/cube.ply", "point features: nx, ny, nz"),
                        ("tetris.xyz", "elements:      X 32")]:
        result = runner.invoke(app, ["info", str(sample / rel)])
        assert result.exit_code == 0 and expect in result.stdout, result.output


def test_info_reads_stdin_with_and_without_format(sample):
    data = (sample / "molecules.sdf").read_bytes()
    sniffed = runner.invoke(app, ["info", "-", "--json"], input=data)
    told = runner.invoke(app, ["info", "-", "--format", "sdf", "--json"], input=data)
    assert sniffed.exit_code == told.exit_code == 0
    assert json.loads(sniffed.stdout)["records"] == json.loads(told.stdout)["records"] > 250


def test_console_script_runs(sample):
    result = subprocess.run([sys.executable, "-m", "groupae_cli", "info", str(sample / "tetris.xyz"), "--json"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and json.loads(result.stdout)["records"] == 8


def test_embed_runs_without_torch_dynamo_or_sympy(tmp_path):
    """Start-up: the whole embed command, model loaded and run, imports neither torch._dynamo (about
    1.3 s) nor sympy (about 0.7 s), and torch's own compiler.disable is back afterwards; e3nn's
    functions that need sympy still get the real one; the output is complete although the process
    skips the interpreter's teardown (os._exit, watched here: atexit hooks never run)."""
    out = tmp_path / "one.h5"
    watch = ("def watched(status):\n"
             "    print('torch._dynamo' in sys.modules, 'sympy' in sys.modules, torch.compiler.disable is d)\n"
             "    from e3nn.o3._angular_spherical_harmonics import _poly_legendre\n"
             "    print(_poly_legendre(2, 1) != {}, type(sys.modules['sympy']).__name__,"
             " hasattr(sys.modules['sympy'], 'Rational'), status, flush=True)\n"
             "    exit_now(status)\n")
    code = ("import atexit, os, sys, torch\nd = torch.compiler.disable\nexit_now = os._exit\n" + watch
            + "os._exit = watched\natexit.register(lambda: print('teardown', flush=True))\n"
            + "from groupae_cli.app import main\n"
            + f"sys.argv = ['groupae', 'embed', {str(SAMPLE / 'xyz' / 'molecules_10.xyz')!r}, '-o', {str(out)!r}, '--quiet']\n"
            + "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False", "True", "True", "module", "True", "0"], result.stdout
    import h5py

    with h5py.File(out) as f:
        assert f.attrs["complete"] and f.attrs["n_records"] == 10


class _Terminal:
    """A stderr that says it is a terminal, so progress bars draw, and keeps what they drew."""

    def __init__(self):
        import io

        self.buffer = io.StringIO()

    def isatty(self):
        return True

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass


def test_progress_bars_show_a_total_and_an_eta(sample, tmp_path, monkeypatch, checkpoint):
    """On a terminal the bars know how far they are (the inputs' bytes, as on disk), so they show
    a percentage and the time left, with the records read so far."""
    import gzip

    import pytest
    import typer

    from groupae_cli.cli.embed import embed
    from groupae_cli.cli.info import info

    packed = tmp_path / "molecules.sdf.gz"
    packed.write_bytes(gzip.compress((sample / "molecules.sdf").read_bytes()))
    for run in (lambda: info(str(sample / "molecules.sdf"), fmt=None, json=True, strict=False, quiet=False),
                lambda: embed([str(packed)], tmp_path / "out.h5", model=str(checkpoint), batch_size=64, shard=None,
                              device="cpu", fmt=None, strict=False, quiet=False)):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        with pytest.raises(typer.Exit):
            run()
        monkeypatch.undo()
        drawn = terminal.buffer.getvalue()
        assert "100%" in drawn and "<00:00" in drawn and "records" in drawn, drawn[-400:]


def test_every_model_command_defaults_to_device_auto():
    """`--device auto` everywhere (align defaulted to cpu)."""
    import inspect

    for command in app.registered_commands:
        parameters = inspect.signature(command.callback).parameters
        if "device" in parameters:
            assert parameters["device"].default == "auto", command.name


def test_info_on_a_model_names_elements_and_counts_epochs_once():
    """`groupae info default`: elements as symbols, and one epoch count (done of planned), not
    'trained 15 epochs' beside a 0-based 'epoch: 14' from metrics.csv."""
    described = json.loads(runner.invoke(app, ["info", "default", "--json"]).stdout)
    shown = runner.invoke(app, ["info", "default"])
    assert shown.exit_code == 0
    lines = shown.stdout.splitlines()
    elements = next(line for line in lines if line.strip().startswith("elements:")).split()[1:]
    assert elements[:3] == ["H", "B", "C"] and len(elements) == len(described["config"]["elements"])
    assert "elements=[" not in shown.stdout
    training = described["training"]
    done, planned = training["epoch"], training["train_config"]["epochs"]
    assert f"trained:     {done} of {planned} epochs" in shown.stdout
    assert not any(line.strip().startswith("epoch:") for line in lines)
