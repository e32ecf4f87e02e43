"""How far the encoder's z is from the best z the decoder can take: the amortisation gap.

For held-out structures of a training run, the model encodes each one (z, frame, order) as users
get it; then z alone is optimised by Adam, with the decoder, the frame and the order frozen, to
lower each structure's RMSD in its own canonical frame and order (the reconstruction RMSD through
the predicted group element, since R is a rotation and P a permutation). Where the optimised z
reconstructs much better than the encoder's, the decoder can draw the structure and the encoder
does not find the code for it; where both are poor, the decoder is the limit.

    python bench/decoder_reach.py --run runs/default_sise --model default --count 128 64 --steps 500

Prints a Markdown table per held-out set (QM9, drug-like): RMSD median / mean from the encoder's z
and from the optimised z, and how far z moved (|z* - z| / |z|, median). float32, one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from groupae_cli.io.checkpoint import load_model
from groupae_cli.train.dataset import StructureSet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes" / "default_model"))
from evaluate import sources  # the recipe's own rule for QM9 / drug-like / Si-Se


def reach(model, batch: dict, steps: int, lr: float) -> dict[str, np.ndarray]:
    """Per structure: RMSD from the encoder's z, from the optimised z, and |z* - z| / |z|."""
    with torch.no_grad():
        out = model.encode(batch)
    layout = out["layout"]
    mask = layout.mask
    order = out["order"]
    slot_types = layout.to_dense(batch["types"]).gather(1, order)
    canonical = out["canonical"].gather(1, order[:, :, None].expand(-1, -1, 3))  # slot order

    def rmsd(z: torch.Tensor) -> torch.Tensor:
        y, _ = model.decode(z, layout.n_atoms, slot_types)
        return ((((y - canonical) ** 2).sum(-1) * mask).sum(1) / mask.sum(1)).sqrt()

    z = out["z"].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        loss = rmsd(z).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return {"encoder": rmsd(out["z"]).numpy(), "optimised": rmsd(z).numpy(),
                "moved": ((z - out["z"]).norm(dim=1) / out["z"].norm(dim=1)).numpy()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a training run directory (cache.npz, split.json)")
    parser.add_argument("--model", required=True, help="a checkpoint path or a shipped model's name")
    parser.add_argument("--count", type=int, nargs=2, default=(128, 64), metavar=("QM9", "DRUG"),
                        help="held-out structures drawn from each set")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = load_model(args.model, "cpu").eval().float()
    for p in model.parameters():
        p.requires_grad_(False)
    data = StructureSet.load(args.run / "cache.npz")
    held_out = np.array(json.loads((args.run / "split.json").read_text())["validation"], dtype=np.int64)
    held_out_sets = sources(data, held_out)
    rng = np.random.default_rng(args.seed)
    print(f"model {args.model}, {args.steps} Adam steps on z (lr {args.lr}), decoder, frame and order frozen\n")
    print("| held-out set | structures | encoder's z: RMSD median / mean (Å) | optimised z: RMSD median / mean (Å) "
          "| abs(z* - z) / abs(z), median |")
    print("|---|---|---|---|---|")
    for name, count in zip(("QM9", "drug-like"), args.count, strict=True):
        chosen = np.sort(rng.permutation(held_out[held_out_sets == name])[:count])
        r = reach(model, data.batch(chosen, model.config.elements, torch.float32), args.steps, args.lr)
        print(f"| {name} | {len(chosen)} | {np.median(r['encoder']):.3f} / {r['encoder'].mean():.3f} "
              f"| {np.median(r['optimised']):.3f} / {r['optimised'].mean():.3f} | {np.median(r['moved']):.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
