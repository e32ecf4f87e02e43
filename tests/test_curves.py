"""Pictures and summaries of a training run: learning_curves.png beside metrics.csv (matplotlib
optional) and `groupae info RUN_DIR`."""

import builtins
import json

import pytest
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.models import preset
from groupae_cli.train import TrainConfig, train_from_files
from groupae_cli.train.curves import CURVES, MISSING_MATPLOTLIB, read_metrics

runner = CliRunner()
MOLECULES = __import__("conftest").SAMPLE / "xyz" / "molecules_10.xyz"


def train(run, quiet=False):
    return train_from_files([str(MOLECULES)], run, preset("tiny"), TrainConfig(epochs=2, batch_size=4, seed=0),
                            device="cpu", quiet=quiet)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "tiny"
    train(path, quiet=True)
    return path


def test_training_draws_its_learning_curves_beside_metrics(run):
    pytest.importorskip("matplotlib")
    png = run / CURVES
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000  # three panels drawn, not an empty canvas
    assert len(read_metrics(run / "metrics.csv")) == 2
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no partial file left


def test_without_matplotlib_training_notes_the_missing_picture(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    train(tmp_path / "run")
    assert (tmp_path / "run" / "metrics.csv").is_file() and not (tmp_path / "run" / CURVES).exists()
    assert capsys.readouterr().err.count(MISSING_MATPLOTLIB) == 1


def test_info_summarises_a_run(run, tmp_path):
    shown = runner.invoke(app, ["info", str(run)])
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "(training run)" in text and str(MOLECULES) in text and "9 train, 1 validation" in text
    assert "epochs:      2 of 2 done" in text and "against the centroid baseline" in text
    assert "best:" in text and "last:        epoch 2:" in text and "metrics.csv" in text
    described = json.loads(runner.invoke(app, ["info", str(run), "--json"]).stdout)
    rows = read_metrics(run / "metrics.csv")
    best = min(rows, key=lambda r: r["val_rmsd_mean"])
    assert described["best"]["epoch"] == int(best["epoch"]) + 1
    assert described["best"]["val_rmsd_mean"] == pytest.approx(best["val_rmsd_mean"])
    assert described["epochs_done"] == described["epochs_planned"] == 2
    assert {"config.yaml", "metrics.csv", "best.ckpt", "last.ckpt"} <= set(described["files"])
    empty = runner.invoke(app, ["info", str(tmp_path)])
    assert empty.exit_code == 2 and "is a directory" in empty.stderr and empty.stderr.count("\n") == 1
