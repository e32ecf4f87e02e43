"""Graphs and per-structure layout in plain torch (no torch_cluster / torch_scatter).

Work is per structure: the padded (B, N) layout costs B x N x N for distances, never (B x N)^2.
"""

from __future__ import annotations

import torch


class Layout:
    """Index bookkeeping between the flat atom list (A,) and the padded (B, N) layout."""

    def __init__(self, batch: torch.Tensor, n_atoms: torch.Tensor):
        self.batch = batch
        self.n_atoms = n_atoms
        self.n_structures = len(n_atoms)
        self.n_max = int(n_atoms.max()) if len(n_atoms) else 0
        self.offsets = torch.cumsum(n_atoms, 0) - n_atoms  # (B,)
        self.local = torch.arange(len(batch), device=batch.device) - self.offsets[batch]  # (A,)
        self.mask = torch.arange(self.n_max, device=batch.device)[None, :] < n_atoms[:, None]  # (B, N)

    def to_dense(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(A, ...) -> (B, N, ...), padding with `fill`."""
        out = x.new_full((self.n_structures, self.n_max, *x.shape[1:]), fill)
        out[self.batch, self.local] = x
        return out

    def to_flat(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, ...) -> (A, ...)."""
        return x[self.batch, self.local]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over each structure's atoms: (A, ...) -> (B, ...)."""
        out = x.new_zeros((self.n_structures, *x.shape[1:]))
        return out.index_add_(0, self.batch, x)


def build_edges(positions: torch.Tensor, layout: Layout, graph: str, cutoff: float, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, dst) of the graph's directed edges, global atom indices; messages go src -> dst.

    "radius": every pair of one structure closer than `cutoff`. "knn": each atom receives from its
    `knn` nearest neighbours, and from every other atom tied with the k-th, so that renumbering
    the atoms can never change the graph.
    """
    dense = layout.to_dense(positions)
    dist = torch.cdist(dense, dense)  # (B, N, N)
    pair = layout.mask[:, :, None] & layout.mask[:, None, :]
    pair &= ~torch.eye(layout.n_max, dtype=torch.bool, device=positions.device)[None]
    if graph == "radius":
        keep = pair & (dist < cutoff)
    else:
        k = torch.clamp(layout.n_atoms - 1, max=knn).clamp(min=1)  # (B,)
        masked = dist.masked_fill(~pair, float("inf"))
        kth = torch.sort(masked, dim=-1).values.gather(-1, (k - 1)[:, None, None].expand(-1, layout.n_max, 1))
        keep = pair & (masked <= kth * (1 + 1e-6) + 1e-9)
    b, dst, src = keep.nonzero(as_tuple=True)  # row = receiving atom
    offset = layout.offsets[b]
    return src + offset, dst + offset
