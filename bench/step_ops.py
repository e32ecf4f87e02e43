"""How many operators one training step dispatches, and where: a GPU step's floor, measured on CPU.

A small model on a GPU is bound by the CPU that dispatches its operators (about 15 µs each in eager
PyTorch, launch included), not by the GPU's arithmetic, and the count does not depend on the batch
size. So the count per step, from one batch of real structures on CPU, is what a design change does
to the GPU step time at batch 256 (bench/RESULTS.md, "The third GPU lease").

    python bench/step_ops.py --model default [--batch-size 16] [--top 12]

Prints the operators dispatched by the forward pass with the loss, by the backward pass, and
where the forward's come from (the innermost groupae or e3nn frame). Views and permutes count
as dispatches too: on a GPU they cost CPU time but launch no kernel.
"""

from __future__ import annotations

import argparse
import collections
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from groupae_cli.io import read_structures
from groupae_cli.io.checkpoint import read_checkpoint
from groupae_cli.models import GroupAE, ModelConfig
from groupae_cli.train import TrainConfig
from groupae_cli.train.dataset import StructureSet
from groupae_cli.train.losses import objective


class Dispatches(TorchDispatchMode):
    """Counts the operators dispatched inside it, by operator and by the innermost frame of ours."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.where: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        ours = [f for f in traceback.extract_stack(limit=40) if "groupae_cli" in f.filename or "e3nn" in f.filename]
        if ours:
            path = ours[-1].filename.replace("\\", "/")
            path = path[path.rfind("e3nn/") if "e3nn/" in path else path.rfind("groupae_cli/"):]
            self.where[f"{path}:{ours[-1].lineno} {ours[-1].name}"] += 1
        else:
            self.where["(no frame of groupae or e3nn)"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="a shipped model's name or a checkpoint")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--top", type=int, default=12, help="lines of the forward's sources to show")
    args = ap.parse_args()
    torch.set_num_threads(1)
    payload = read_checkpoint(args.model)
    model = GroupAE(ModelConfig.from_dict(payload["config"])).float().train()  # built as the trainer builds it
    model.load_state_dict(payload["state_dict"])
    molecules = [s for s in read_structures("sample_data/molecules.sdf") if hasattr(s, "numbers")]
    data = StructureSet.from_structures(molecules[: args.batch_size])
    batch = data.batch(range(len(data)), model.config.elements)
    c = TrainConfig(recon_loss="rmsd")

    def step() -> torch.Tensor:
        out = model(batch, tau=c.tau_end, straight_through=c.straight_through(0), tie_noise=c.tie_noise)
        return objective(out, batch, c.type_weight, c.entropy_weight, 0.0, c.distance_weight, c.distance_cutoff,
                         c.frame_weight, c.frame_floor, c.recon_loss)[0]

    step().backward()  # warm: lazily built modules and caches
    model.zero_grad(set_to_none=True)
    forward, backward = Dispatches(), Dispatches()
    with forward:
        loss = step()
    with backward:
        loss.backward()
    print(f"model {args.model}, {len(data)} structures: {forward.total:,} operators forward (with the loss), "
          f"{backward.total:,} backward, {sum(1 for p in model.parameters() if p.requires_grad)} parameter tensors")
    print("\n| operators | forward, from |\n| ---: | --- |")
    for where, n in forward.where.most_common(args.top):
        print(f"| {n:,} | `{where}` |")
    print("\nmost dispatched, forward:", ", ".join(f"{k} {v}" for k, v in forward.ops.most_common(8)))
    print("most dispatched, backward:", ", ".join(f"{k} {v}" for k, v in backward.ops.most_common(8)))


if __name__ == "__main__":
    main()
