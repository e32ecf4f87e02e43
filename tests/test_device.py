"""Device discipline: every tensor the model, the loss, validation and the symmetry helpers build
lives on the batch's device.

Without a GPU this is checked on the CPU with torch's default device set to "meta": a tensor
created without an explicit device (`torch.arange(n)`) then lands on "meta" and the computation
fails or returns a meta tensor, which is exactly the bug that crashes CUDA runs (a CPU tensor in a
CUDA batch). The CUDA test trains two epochs and validates on the GPU; it is skipped without one.
"""

from contextlib import contextmanager

import pytest
import torch
from conftest import SAMPLE, split
from rdkit import Chem
from rdkit.Chem import AllChem

from groupae_cli.data import collate
from groupae_cli.io import read_structures
from groupae_cli.io.records import Structure
from groupae_cli.models import GroupAE, preset
from groupae_cli.models.symmetry import GroupElement, symmetry_errors
from groupae_cli.train.losses import objective
from groupae_cli.train.metrics import evaluate, per_structure


@contextmanager
def stray_tensors_go_to_meta():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _tensors(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v)
    elif hasattr(value, "__dict__"):  # GroupElement, Layout
        yield from _tensors(vars(value))


def _benzene() -> Structure:
    """A symmetric molecule: its learned frame vanishes and anchor atoms define it."""
    mol = Chem.AddHs(Chem.MolFromSmiles("c1ccccc1"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    return Structure([a.GetAtomicNum() for a in mol.GetAtoms()], mol.GetConformer().GetPositions(), "benzene", "", 0)


#: every embedding head, and the canonical one with its frame-free block and the decoder's memory tokens
HEADS = {"mean": {}, "attention": {"pooling": "attention"},
         "canonical": {"pooling": "canonical", "embedding_composition": True, "embedding_dim": 16, "embedding_identity": 8,
                       "decoder_memory": 2}}


@pytest.fixture(scope="module", params=sorted(HEADS))
def model_and_batch(request):
    structures, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    torch.manual_seed(0)
    model = GroupAE(preset("tiny", **HEADS[request.param]))
    return model, collate([*structures[:5], _benzene()], model.config.elements)


def test_the_check_catches_a_tensor_made_without_a_device():
    batch = {"x": torch.zeros(3)}
    with stray_tensors_go_to_meta():
        stray = torch.arange(3)
        kept = torch.arange(3, device=batch["x"].device)
    assert stray.device.type == "meta" and kept.device == batch["x"].device


def test_forward_loss_and_validation_stay_on_the_batch_device(model_and_batch):
    model, batch = model_and_batch
    device = batch["positions"].device
    with stray_tensors_go_to_meta():
        out = model(batch, tau=0.1, straight_through=True, tie_noise=1e-3)
        assert bool(out["frame_degenerate"][-1])  # benzene took the anchor-frame path
        loss, _ = objective(out, batch, type_weight=0.1, entropy_weight=0.025, match_weight=0.5)
        loss.backward()
        model.eval()
        figures = per_structure(model, batch)
        summary = evaluate(model, [batch], seed=3)
        model.train()
    assert {t.device for t in _tensors(out)} == {device} and loss.device == device
    assert all(v.shape == (6,) for v in figures.values())
    assert summary["val_invariance"] < 1e-4


def test_random_group_elements_live_on_the_batch_device(model_and_batch):
    model, batch = model_and_batch
    with stray_tensors_go_to_meta():
        g = GroupElement.random(batch, generator=torch.Generator().manual_seed(0))
        moved = g.apply(batch)
        errors = symmetry_errors(model.eval(), batch, g)
    assert {t.device for t in _tensors(g)} | {t.device for t in _tensors(moved)} == {batch["positions"].device}
    assert errors["z_relative"] < 1e-4
    # the same seed gives the same element: draws are made on the CPU whatever the batch's device
    again = GroupElement.random(batch, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.rotation, g.rotation, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("head", sorted(HEADS))
def test_training_runs_and_validates_on_cuda(tmp_path, head):
    from groupae_cli.io.checkpoint import load_model
    from groupae_cli.train import TrainConfig, train_from_files

    history = train_from_files([str(SAMPLE / "molecules.sdf")], tmp_path, preset("tiny", **HEADS[head]),
                               TrainConfig(epochs=2, batch_size=16, epoch_size=64, val_size=32, seed=1),
                               device="cuda", quiet=True)
    assert len(history) == 2 and history[-1]["val_invariance"] < 1e-3
    assert torch.isfinite(torch.tensor(history[-1]["val_rmsd_mean"]))
    structures, _ = split(read_structures(SAMPLE / "molecules.sdf"))
    gpu, cpu = load_model(tmp_path / "last.ckpt", "cuda"), load_model(tmp_path / "last.ckpt", "cpu")
    batch = collate(structures[:8], cpu.config.elements)
    z_gpu = gpu.encode({k: v.cuda() for k, v in batch.items()})["z"].cpu()
    torch.testing.assert_close(z_gpu, cpu.encode(batch)["z"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hold", [False, True])
def test_the_z_fit_and_its_relays_stay_on_the_batch_device(model_and_batch, hold):
    """--fit-steps: the fit, and the group element its relays amend, on the batch's device (the
    relays solve their assignments in numpy and bring the answers back); with the frame-free part
    of z held (--fit-hold-identity) too, where the model's z has one (elsewhere that is refused)."""
    model, batch = model_and_batch
    model.eval().fit_steps, model.fit_hold_identity = 6, hold
    try:
        if hold and not model.config.embedding_identity:
            with pytest.raises(ValueError, match="nothing to hold"), torch.no_grad():
                model.encode(batch)
            return
        with stray_tensors_go_to_meta(), torch.no_grad():
            out = model.encode(batch)
    finally:
        model.fit_steps, model.fit_hold_identity = 0, False
    assert {t.device for t in _tensors(out)} == {batch["positions"].device}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embed_with_the_model_in_gpu_workers_writes_what_the_cpu_does(tmp_path):
    """`embed --device cuda --encode-in-workers`: each worker process parses its share and runs the
    model on the GPU; the file holds the same records, in the same order, as a CPU run's."""
    import h5py
    import numpy as np
    from typer.testing import CliRunner

    from groupae_cli.app import app

    runs = {"gpu": ["--device", "cuda", "--workers", "2", "--encode-in-workers", "--batch-size", "32"],
            "cpu": ["--device", "cpu", "--workers", "0"]}
    files = {}
    for name, options in runs.items():
        out = tmp_path / f"{name}.h5"
        result = CliRunner().invoke(app, ["embed", str(SAMPLE / "molecules.sdf"), "-o", str(out), "--quiet", *options])
        assert result.exit_code == 0, result.output
        with h5py.File(out) as f:
            files[name] = {k: f[k][()] for k in ("embedding", "rotation", "translation", "permutation", "name")}
    gpu, cpu = files["gpu"], files["cpu"]
    assert len(gpu["name"]) == len(cpu["name"]) > 300 and (gpu["name"] == cpu["name"]).all()
    assert np.array_equal(gpu["permutation"], cpu["permutation"])
    for key in ("embedding", "rotation", "translation"):
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=0, atol=1e-9 * np.abs(cpu[key]).max())
