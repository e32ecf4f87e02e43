"""Import e3nn without importing torch._dynamo (about 1.3 s of every command's start-up).

At import time e3nn decorates one function (building Wigner matrices) with
`torch.compiler.disable`, and that decorator imports torch._dynamo. The decorator only matters
when a model is run under `torch.compile`, which groupae never does. So while e3nn is imported the
decorator is the identity, and torch's own is put back at once. Where torch._dynamo is loaded
already, or e3nn is, nothing is changed.
"""

from __future__ import annotations

import sys

import torch


def import_e3nn() -> None:
    if "torch._dynamo" in sys.modules or "e3nn.o3" in sys.modules:
        return
    original = torch.compiler.disable

    def identity(fn=None, recursive=True, **kwargs):
        return fn if fn is not None else (lambda f: f)

    torch.compiler.disable = identity
    try:
        import e3nn.o3  # noqa: F401
    finally:
        torch.compiler.disable = original


import_e3nn()
