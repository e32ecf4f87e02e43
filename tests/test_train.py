"""Training end to end on real sample molecules with a tiny model: metrics, split, checkpoints,
resume, the command line, and a 2-process torchrun run."""

import json
import os
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest
import torch
import yaml
from conftest import split
from typer.testing import CliRunner

from groupae_cli.app import app
from groupae_cli.errors import UsageError
from groupae_cli.io import read_structures, write_structures
from groupae_cli.io.checkpoint import FORMAT_VERSION, load_model, read_checkpoint
from groupae_cli.models import preset
from groupae_cli.train import TrainConfig, train_from_files
from groupae_cli.train.dataset import StructureSet, epoch_batches

runner = CliRunner()


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """40 sample molecules, among them the conformers (3 each) of five molecules."""
    structures, _ = split(read_structures(__import__("conftest").SAMPLE / "molecules.sdf"))
    chosen = structures[:28] + [s for s in structures[28:] if "_conf" in s.name][:12]
    path = tmp_path_factory.mktemp("data") / "subset.sdf"
    write_structures(chosen, path)
    return path


@pytest.fixture(scope="module")
def trained(subset, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    history = train_from_files([str(subset)], run, preset("tiny"), TrainConfig(epochs=4, batch_size=8, lr=3e-3, seed=1),
                               device="cpu", quiet=True)
    return run, history


def test_run_directory_holds_what_it_promises(trained):
    run, _ = trained
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.csv", "best.ckpt", "last.ckpt", "cache.npz", "split.json"}
    lines = (run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("epoch,lr,tau")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["embedding_dim"] == preset("tiny").embedding_dim and config["train"]["epochs"] == 4


def test_training_lowers_the_loss_and_reports_every_figure(trained):
    _, history = trained
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    last = history[-1]
    for key in ("val_rmsd_mean", "val_baseline_rmsd", "val_element_acc", "val_perm_acc", "val_invariance"):
        assert np.isfinite(last[key]), key
    assert last["val_invariance"] < 1e-4


def test_split_keeps_conformers_of_a_molecule_together(trained):
    run, _ = trained
    data = StructureSet.load(run / "cache.npz")
    groups = data.groups()
    split_ = json.loads((run / "split.json").read_text())
    train_groups, val_groups = set(groups[split_["train"]]), set(groups[split_["validation"]])
    assert split_["validation"] and not train_groups & val_groups
    assert (np.bincount(groups) == 3).sum() == 5  # the conformer families were grouped


def test_a_split_by_name_keeps_each_molecule_on_its_side_as_the_data_set_grows():
    from conftest import SAMPLE

    records, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    full = StructureSet.from_structures(records)
    names = np.array(full.molecule_names())
    kept = sorted(set(names))[::2]  # a data set of half the molecules, then the whole one
    part = StructureSet.from_structures([r for r, n in zip(records, names) if n in kept])

    def held_out(data, seed=0):
        _, val = data.split(0.3, seed, by="name")
        return {data.molecule_names()[i] for i in val}

    whole, half = held_out(full), held_out(part)
    assert half == whole & set(kept)  # no molecule changed sides
    groups = full.groups()
    train, val = full.split(0.3, 0, by="name")
    assert not set(groups[train]) & set(groups[val])  # conformers stay together
    assert 0.15 < len(whole) / len(set(names)) < 0.45
    assert held_out(full, seed=1) != whole
    with pytest.raises(ValueError, match="split"):
        TrainConfig(split="hash")


def test_checkpoint_is_self_describing_and_loads_without_pickle(trained, subset):
    run, _ = trained
    payload = torch.load(run / "best.ckpt", weights_only=True)
    assert payload["format_version"] == FORMAT_VERSION
    assert set(payload["versions"]) == {"groupae", "torch", "e3nn"}
    assert payload["config"]["embedding_dim"] == preset("tiny").embedding_dim
    model = load_model(run / "last.ckpt")
    structures, _ = split(read_structures(subset))
    from groupae_cli.data import collate

    batch = collate(structures[:5], model.config.elements)
    again = load_model(run / "last.ckpt")
    torch.testing.assert_close(model.encode(batch)["z"], again.encode(batch)["z"], rtol=0, atol=0)
    result = runner.invoke(app, ["info", str(run / "best.ckpt")])
    assert result.exit_code == 0 and "format 1" in result.stdout and "e3nn" in result.stdout


def test_a_file_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"format_version": 1, "payload": TrainConfig()}, path)  # an arbitrary object
    with pytest.raises(UsageError, match="not a groupae checkpoint"):
        read_checkpoint(path)


def test_resume_continues_where_the_run_stopped(subset, tmp_path):
    config = TrainConfig(epochs=2, batch_size=8, seed=2)
    train_from_files([str(subset)], tmp_path, preset("tiny"), config, device="cpu", quiet=True)
    with pytest.raises(UsageError, match="holds a run already"):
        train_from_files([str(subset)], tmp_path, preset("tiny"), config, device="cpu", quiet=True)
    history = train_from_files([], tmp_path, preset("tiny"), TrainConfig(), resume=True, device="cpu", quiet=True,
                               resume_epochs=3)
    assert [int(r["epoch"]) for r in history] == [0, 1, 2]
    assert read_checkpoint(tmp_path / "last.ckpt")["training"]["epoch"] == 3


def test_curriculum_leaves_large_records_out(subset):
    data = StructureSet.from_structures(split(read_structures(subset))[0])
    sizes = data.sizes
    limit = int(np.median(sizes))
    batches = epoch_batches(np.arange(len(data)), sizes, 4, seed=0, epoch=0, max_atoms=limit)
    kept = np.concatenate(batches)
    assert (sizes[kept] <= limit).all() and len(kept) == (sizes <= limit).sum()


def test_epoch_size_slices_passes_so_every_record_comes_once_per_pass():
    indices, sizes = np.arange(100, 200), np.full(100, 5)
    epochs = [np.concatenate(epoch_batches(indices, sizes, 7, seed=3, epoch=e, epoch_size=30)) for e in range(6)]
    assert all(len(e) == 30 for e in epochs)
    for first in (0, 3):  # 100 // 30 = 3 epochs per pass: no repeat inside a pass, a new shuffle after
        seen = np.concatenate(epochs[first : first + 3])
        assert len(np.unique(seen)) == 90 and set(seen) <= set(indices)
    assert not np.array_equal(np.sort(epochs[0]), np.sort(epochs[3]))


def test_cli_train_and_bad_options(subset, tmp_path):
    ok = runner.invoke(app, ["train", str(subset), "-o", str(tmp_path / "run"), "--preset", "tiny", "--epochs", "1",
                             "--batch-size", "16", "--device", "cpu", "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "run" / "best.ckpt").is_file()
    bad = runner.invoke(app, ["train", str(subset), "-o", str(tmp_path / "x"), "--preset", "huge"])
    assert bad.exit_code == 2 and "unknown preset 'huge'" in bad.stderr
    resumed = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), "--resume", "--epochs", "2", "--device", "cpu",
                                  "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3
    nothing = runner.invoke(app, ["train", "-o", str(tmp_path / "y")])
    assert nothing.exit_code == 2 and "no input files" in nothing.stderr


@pytest.mark.parametrize(("line", "message"), [
    ("grad_clip: -1", "grad_clip must be > 0"),  # would scale every gradient by a negative number: uphill
    ('augment: "no"', "augment: expected true or false, not 'no'"),  # a string, true for `if`
    ("batch_size: 2.5", "batch_size: expected an integer, not 2.5"),
    ("lr: .nan", "lr: expected a finite number, not nan"),
    ("warmup_epochs: -3", "warmup_epochs must be >= 0"),
])
def test_a_training_config_value_of_the_wrong_type_or_range_is_one_line_before_any_work(subset, tmp_path, line,
                                                                                          message):
    config = tmp_path / "c.yaml"
    config.write_text(f"train:\n  {line}\n")
    run = runner.invoke(app, ["train", str(subset), "-o", str(tmp_path / "run"), "--preset", "tiny",
                              "--config", str(config), "--quiet"])
    assert run.exit_code == 2 and message in run.stderr and "Traceback" not in run.output, run.output
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=-1.0)


# the suite's longest test (two processes each importing torch and e3nn, about 10 s on 2 quiet cores),
# kept in the default suite: CI is the only place the DistributedDataParallel path runs
def test_torchrun_two_processes_train_one_checkpoint(subset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "groupae_cli", "train", str(subset), "-o", str(tmp_path), "--preset", "tiny", "--epochs", "1",
           "--batch-size", "8", "--device", "cpu", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2


def test_distance_loss_sees_local_geometry_not_pose(subset):
    """Zero for the input itself and for a rigidly moved copy; positive once one bond is stretched."""
    from groupae_cli.data import collate
    from groupae_cli.models.graph import Layout
    from groupae_cli.models.symmetry import GroupElement
    from groupae_cli.train.losses import distance_error

    structures, _ = split(read_structures(subset))
    batch = collate(structures[:4], preset("tiny").elements, dtype=torch.float64)
    layout = Layout(batch["batch"], batch["n_atoms"])
    g = GroupElement.random(batch, permute=False, generator=torch.Generator().manual_seed(0))
    for positions in (batch["positions"], g.apply_points(batch["positions"], batch["batch"])):
        assert distance_error({"layout": layout, "reconstruction": positions}, batch, 3.0) < 1e-20
    stretched = batch["positions"].clone()
    stretched[0] += 0.2 * (stretched[0] - stretched[1]) / (stretched[0] - stretched[1]).norm()
    assert distance_error({"layout": layout, "reconstruction": stretched}, batch, 3.0) > 1e-4


def test_frame_penalty_raises_the_conditioning_of_learned_frames(subset):
    """The frame penalty's gradient makes the pooled frame vectors cancel less: a few steps on it
    alone raise the conditioning the rotation head reports (in [0, 1])."""
    from groupae_cli.data import collate
    from groupae_cli.models import GroupAE
    from groupae_cli.train.losses import objective

    structures, _ = split(read_structures(subset))
    torch.manual_seed(0)
    model = GroupAE(preset("tiny"))
    batch = collate(structures[:16], model.config.elements)
    before = model.encode(batch)["frame_conditioning"].detach()
    assert ((before >= 0) & (before <= 1)).all()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(20):
        out = model(batch, tau=0.1)
        loss, _ = objective(out, batch, type_weight=0.0, entropy_weight=0.0, frame_weight=1.0, frame_floor=1.0)
        reconstruction = ((out["reconstruction"] - batch["positions"]) ** 2).sum(-1).mean()
        optimizer.zero_grad()
        (loss - reconstruction).backward()  # the frame penalty alone
        optimizer.step()
    after = model.encode(batch)["frame_conditioning"].detach()
    assert after.mean() > 2 * before.mean(), (before.mean(), after.mean())


def test_init_starts_a_new_run_from_a_trained_model(trained, subset, tmp_path):
    """--init: the new run's model is the checkpoint's (config and weights, here unchanged by a
    learning rate of 1e-12), its optimizer and schedule are fresh, and it says where it started;
    a checkpoint whose model lacks an element of the inputs, model options beside --init, and
    --init with --resume are each one line."""
    run, _ = trained
    start = run / "best.ckpt"
    again = tmp_path / "again"
    history = train_from_files([str(subset)], again, preset("small"), TrainConfig(epochs=1, batch_size=8, lr=1e-12, seed=2),
                               device="cpu", quiet=True, init=str(start))
    assert len(history) == 1
    before, after = read_checkpoint(start), read_checkpoint(again / "last.ckpt")
    assert after["config"] == before["config"]  # tiny, not the `small` passed in
    for name, tensor in before["state_dict"].items():
        torch.testing.assert_close(after["state_dict"][name], tensor, rtol=0, atol=1e-9)
    assert after["training"]["init"]["path"] == str(start) and len(after["training"]["init"]["sha256"]) == 64
    assert after["state"]["epoch"] == 1  # a new run: its own epoch count
    from groupae_cli.io.checkpoint import save_checkpoint
    from groupae_cli.models import GroupAE

    heavy_only = tmp_path / "heavy.ckpt"
    save_checkpoint(heavy_only, GroupAE(preset("tiny", elements=(6, 7, 8, 9, 16, 17))))
    with pytest.raises(UsageError, match="does not know H, P, found in the inputs"):
        train_from_files([str(subset)], tmp_path / "heavy", preset("tiny"), TrainConfig(epochs=1), device="cpu",
                         quiet=True, init=str(heavy_only))
    with pytest.raises(UsageError, match="--resume"):
        train_from_files([], again, preset("tiny"), TrainConfig(epochs=2), resume=True, init=str(start), quiet=True)
    refused = CliRunner().invoke(app, ["train", str(subset), "-o", str(tmp_path / "cli"), "--init", str(start),
                                       "--embedding-dim", "16"])
    assert refused.exit_code == 2 and "--init takes the model from its checkpoint" in refused.output


def test_the_reconstruction_losses_are_what_they_say(subset):
    """recon_loss "rmsd": the reconstruction term is the mean over structures of each one's RMSD,
    so a small molecule counts as much as a large one; "distance" the mean of the atoms' distances;
    "mse" is the mean squared error per atom."""
    from groupae_cli.data import collate
    from groupae_cli.models import GroupAE
    from groupae_cli.train.losses import objective

    structures, _ = split(read_structures(subset))
    torch.manual_seed(0)
    m = GroupAE(preset("tiny")).double()
    batch = collate(structures[:5], m.config.elements, dtype=torch.float64)
    out = m(batch, tau=0.1)
    mse, mse_parts = objective(out, batch, 0.0, 0.0)
    rmsd, _ = objective(out, batch, 0.0, 0.0, recon_loss="rmsd")
    err = ((out["reconstruction"] - batch["positions"]) ** 2).sum(-1).detach().numpy()
    starts = np.cumsum([0, *batch["n_atoms"].tolist()])
    per_structure = [np.sqrt(err[a:b].mean()) for a, b in pairwise(starts)]
    assert rmsd.item() == pytest.approx(np.mean(per_structure), rel=1e-6)
    distance, _ = objective(out, batch, 0.0, 0.0, recon_loss="distance")
    assert distance.item() == pytest.approx(np.sqrt(err).mean(), rel=1e-6)
    assert mse.item() == pytest.approx(err.mean(), rel=1e-9) and mse_parts["recon_sq"] == pytest.approx(err.mean())
    with pytest.raises(ValueError, match="recon_loss"):
        TrainConfig(recon_loss="l1")


def test_ema_averages_the_weights_and_resumes_both_sets(subset, tmp_path):
    """ema: the update is the warmed-up exponential average; the checkpoint holds the average (what
    validation scored), the training state the optimizer's weights and the number of updates, and
    --resume puts each back where it was."""
    from groupae_cli.train.loop import Trainer, ema_update

    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    expected = 0.0
    for n in range(1, 30):  # AveragedModel copies at n = 0, then calls the update with n >= 1
        decay = min(0.9, (1 + n) / (10 + n))
        ema_update(0.9)(averaged, current, torch.tensor(n))
        expected = decay * expected + (1 - decay) * 1.0
    torch.testing.assert_close(averaged[0], torch.full((3,), expected))

    config = TrainConfig(epochs=2, batch_size=8, seed=4, ema=0.9)
    history = train_from_files([str(subset)], tmp_path, preset("tiny"), config, device="cpu", quiet=True)
    payload = read_checkpoint(tmp_path / "last.ckpt")
    state, average = payload["state"], payload["state_dict"]
    steps = state["scheduler"]["last_epoch"]
    assert state["ema_updates"] == steps > 0
    moved = [name for name, w in state["train_weights"].items()
             if w.is_floating_point() and not torch.equal(w, average[name])]
    assert len(moved) > 10  # the average is not the last step's weights
    model = load_model(tmp_path / "last.ckpt")
    for name, w in model.state_dict().items():
        torch.testing.assert_close(w, average[name].to(w.dtype), rtol=0, atol=0)
    assert len(history) == 2

    def batches(epoch):  # resume reads weights and counts only
        return [None] * (steps // 2)

    trainer = Trainer(model.config, config, tmp_path / "again", batches, list, device="cpu", quiet=True)
    trainer.resume(tmp_path / "last.ckpt")
    assert int(trainer.ema.n_averaged) == steps
    for name, w in trainer.model.state_dict().items():
        assert torch.equal(w, state["train_weights"][name]), name
    for name, w in trainer.ema.module.state_dict().items():
        assert torch.equal(w, average[name]), name
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)


def test_an_extra_loss_term_is_trained_on(subset, tmp_path):
    """Trainer(extra_loss=...) adds the term to every step's loss (distillation uses it): a term that
    pulls z to zero leaves z far smaller than the same run without it, from the same start."""
    from groupae_cli.train.dataset import Batches, StructureSet, fixed_batches
    from groupae_cli.train.loop import Trainer

    model_config = preset("tiny")
    structures, _ = split(read_structures(subset))
    data = StructureSet.from_structures(structures)
    order = np.arange(len(structures))

    def batches(epoch):
        return Batches(data, list(fixed_batches(np.random.default_rng(epoch).permutation(order), 8)),
                       model_config.elements)

    def z_size(trainer):
        with torch.no_grad():
            return float(torch.cat([trainer.model.eval().encode(b)["z"] for b in batches(0)]).abs().mean())

    config = TrainConfig(epochs=3, batch_size=8, lr=3e-3, seed=2)
    seen = []

    def shrink_z(out, batch):
        seen.append(len(batch["n_atoms"]))
        return 30 * out["z"].square().mean(), {"z_square": out["z"].square().mean().item()}

    plain = Trainer(model_config, config, tmp_path / "plain", batches, lambda: batches(0), device="cpu", quiet=True)
    pulled = Trainer(model_config, config, tmp_path / "pulled", batches, lambda: batches(0), device="cpu",
                     quiet=True, extra_loss=shrink_z)
    start = z_size(pulled)
    assert start == pytest.approx(z_size(plain))  # the same weights at the start
    plain.fit(), pulled.fit()
    assert sum(seen) == 3 * len(structures)  # called on every training batch, none else
    assert z_size(pulled) < 0.5 * start and z_size(pulled) < 0.25 * z_size(plain)  # measured: 0.30x, 0.13x
