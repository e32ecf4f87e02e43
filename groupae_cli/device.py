"""Which torch device a command runs on (--device auto|cpu|cuda[:i])."""

from __future__ import annotations

import os

import torch


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when available (the local rank's GPU under torchrun), else CPU."""
    from groupae_cli.errors import UsageError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        if name == "cuda" and "LOCAL_RANK" in os.environ:
            name = f"cuda:{os.environ['LOCAL_RANK']}"
    elif name != "cpu":
        raise UsageError(f"--device must be auto, cpu or cuda[:i], not {name!r}")
    return torch.device(name)
