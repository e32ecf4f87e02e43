"""A committed checkpoint keeps loading and keeps giving the same numbers (TorchMD-Net's golden files)."""

import importlib.util
from pathlib import Path

import numpy as np

from groupae_cli.io.checkpoint import load_model

HERE = Path(__file__).resolve().parent / "golden"


def test_golden_checkpoint_gives_the_recorded_outputs():
    spec = importlib.util.spec_from_file_location("make_golden", HERE / "make_golden.py")
    make_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_golden)

    expected = np.load(HERE / "tiny_v1_expected.npz")
    got = make_golden.outputs(load_model(HERE / "tiny_v1.ckpt"))
    np.testing.assert_array_equal(got["order"], expected["order"])
    for key in ("z", "rotation", "reconstruction"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-9, atol=1e-9, err_msg=key)
