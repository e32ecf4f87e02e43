"""Write the golden checkpoint and its expected outputs (run only when a change is meant to alter them).

    python tests/golden/make_golden.py

A tiny untrained model (preset tiny, seed 0) saved as a checkpoint, and its encoder outputs on five
sample molecules in float64. tests/test_golden.py checks that the checkpoint keeps loading and
keeps giving these numbers: a change that alters them breaks every checkpoint users hold.
"""

from pathlib import Path

import numpy as np
import torch

from groupae_cli.data import collate
from groupae_cli.io import Failure, read_structures
from groupae_cli.io.checkpoint import save_checkpoint
from groupae_cli.models import GroupAE, preset

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent.parent / "sample_data" / "molecules.sdf"


def molecules():
    structures = [s for s in read_structures(SAMPLE) if not isinstance(s, Failure)]
    return structures[::60][:5]


def outputs(model) -> dict[str, np.ndarray]:
    batch = collate(molecules(), model.config.elements, dtype=torch.float64)
    with torch.no_grad():
        out = model.double()(batch)
    return {"z": out["z"].numpy(), "rotation": out["rotation"].numpy(), "order": out["order"].numpy(),
            "reconstruction": out["reconstruction"].numpy()}


def main() -> None:
    torch.manual_seed(0)
    model = GroupAE(preset("tiny")).eval()
    save_checkpoint(HERE / "tiny_v1.ckpt", model, training={"note": "golden file, untrained"})
    np.savez(HERE / "tiny_v1_expected.npz", **outputs(model))


if __name__ == "__main__":
    main()
