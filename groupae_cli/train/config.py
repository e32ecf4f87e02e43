"""Training configuration: one frozen dataclass, written beside every run as config.yaml."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from groupae_cli.models.config import check_keys


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup_epochs: int = 1
    grad_clip: float = 1.0
    # an exponential moving average of the weights with this decay (0: off), with the usual warm-up
    # (decay min(ema, (1 + n) / (10 + n)) at update n): it is what validation scores and what the
    # checkpoints hold as the model; the raw weights travel in the training state for --resume
    ema: float = 0.0
    val_fraction: float = 0.1
    # how molecules go to validation: "random", a seeded draw over the molecules of these inputs;
    # "name", a seeded hash of each molecule's name, so a molecule keeps its side when others are
    # added to or removed from the inputs (a data set that grows keeps its held-out molecules held out)
    split: str = "random"
    # large sets: an epoch is this many training structures (0: all), taken in turn from a shuffled
    # pass, so every structure is seen once before any is seen twice; validation each epoch uses a
    # fixed random subset of this size (0: all held-out structures)
    epoch_size: int = 0
    val_size: int = 0
    seed: int = 0
    # the relaxed permutation: tau annealed geometrically; straight-through (the hard P forward,
    # the soft P's gradient) from this fraction of the epochs on
    tau_start: float = 0.1
    tau_end: float = 0.02
    straight_through_from: float = 0.0
    tie_noise: float = 1e-3
    entropy_weight: float = 0.025  # the paper's weight for point clouds
    type_weight: float = 0.1
    # the reconstruction term: "mse", the mean squared error per atom (Å^2); "rmsd", the mean over
    # structures of each structure's RMSD (Å): every structure counts the same, and small errors
    # keep a gradient that does not fade as they shrink; "distance", the mean over atoms of each
    # atom's distance from its place (Å): the same, atom by atom
    recon_loss: str = "mse"
    # a loss on the decoded interatomic distances of pairs closer than `distance_cutoff` (Å) in the
    # input (bonds and angles): local geometry, whatever the frame and order (0: off)
    distance_weight: float = 0.0
    distance_cutoff: float = 3.0
    # a penalty on learned frames whose conditioning (RotationHead) falls below `frame_floor`:
    # well-conditioned frames keep float32 round-off out of R and of z's canonical-frame features
    frame_weight: float = 0.0
    frame_floor: float = 0.1
    # helping the order be learned: Hungarian-matched reconstruction first, fading out over this
    # fraction of the epochs (0: off)
    match_fraction: float = 0.0
    # curriculum: the largest structure size allowed grows over this fraction of the epochs
    curriculum_fraction: float = 0.0
    # random pose and order per batch (not needed for invariance, which is exact)
    augment: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # a YAML config's values: "no" is a string, 2.5 not an int
            value = getattr(self, field.name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            expected = {"int": ("an integer", number and isinstance(value, int)),
                        "float": ("a finite number", number and math.isfinite(value)),
                        "bool": ("true or false", isinstance(value, bool)),
                        "str": ("a string", isinstance(value, str))}[field.type]
            if not expected[1]:
                raise ValueError(f"training config {field.name}: expected {expected[0]}, not {value!r}")
        not_positive = [name for name in ("lr", "grad_clip", "distance_cutoff") if not getattr(self, name) > 0]
        if not_positive:  # a negative grad_clip turns every step uphill
            raise ValueError(f"{', '.join(not_positive)} must be > 0")
        negative = [name for name in ("epoch_size", "val_size", "weight_decay", "warmup_epochs", "seed", "tie_noise",
                                      "entropy_weight", "type_weight", "distance_weight", "frame_weight",
                                      "frame_floor", "match_fraction", "curriculum_fraction", "straight_through_from")
                    if getattr(self, name) < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)} must be >= 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError("ema must be in [0, 1)")
        if self.split not in ("random", "name"):
            raise ValueError(f"split must be 'random' or 'name', not {self.split!r}")
        if self.recon_loss not in ("mse", "rmsd", "distance"):
            raise ValueError(f"recon_loss must be 'mse', 'rmsd' or 'distance', not {self.recon_loss!r}")
        if not 0 < self.tau_end <= self.tau_start:
            raise ValueError("need 0 < tau_end <= tau_start")

    def tau(self, epoch: int) -> float:
        frac = epoch / max(1, self.epochs - 1)
        return self.tau_start * (self.tau_end / self.tau_start) ** frac

    def match_weight(self, epoch: int) -> float:
        if self.match_fraction <= 0:
            return 0.0
        return max(0.0, 1.0 - epoch / (self.match_fraction * self.epochs))

    def straight_through(self, epoch: int) -> bool:
        return epoch >= self.straight_through_from * self.epochs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        check_keys(cls, data, "training")
        return cls(**data)
