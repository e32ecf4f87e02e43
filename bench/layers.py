"""CPU throughput of candidate e3nn message-passing layers on real molecules.

Every variant maps the preset's hidden irreps to themselves and is used exactly like one encoder
interaction: gather neighbour features, tensor product with the edge spherical harmonics,
index_add_ into the receivers, o3.Linear (+ self-connection), Gate.

  uvu             the project's own Interaction (channel-wise TP, per-edge weights from a radial MLP)
  fctp-edge       FullyConnectedTensorProduct, per-edge weights from a radial MLP
  fctp-shared     FullyConnectedTensorProduct, shared weights; messages scaled by a learned scalar
                  radial envelope per edge (radial MLP -> 1, zero at the cutoff)
  linear-then-uvu uvu on half the channels: an o3.Linear halves the multiplicities before the TP

The edge features (spherical harmonics, Bessel radial basis) come from the project's Encoder and
are computed once outside the timings, as they are shared by all layers of an encoder.

    python bench/layers.py --preset small medium --repeats 7
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import e3nn
import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import nn

from groupae_cli.data import BATCH, N_ATOMS, POSITIONS, collate
from groupae_cli.io import Failure, read_structures
from groupae_cli.models.config import preset
from groupae_cli.models.encoder import Encoder, Interaction, _gate
from groupae_cli.models.graph import Layout, build_edges


class FCTPInteraction(nn.Module):
    """Interaction with a fully connected TP: per-edge weights (`per_edge`) or shared weights x envelope."""

    def __init__(self, irreps: o3.Irreps, irreps_sh: o3.Irreps, radial_basis: int, radial_hidden: int,
                 avg_neighbors: float, per_edge: bool):
        super().__init__()
        self.gate = _gate(irreps)
        self.per_edge = per_edge
        self.tp = o3.FullyConnectedTensorProduct(irreps, irreps_sh, self.gate.irreps_in, shared_weights=not per_edge)
        out = self.tp.weight_numel if per_edge else 1
        self.radial = FullyConnectedNet([radial_basis, radial_hidden, out], torch.nn.functional.silu)
        self.post = o3.Linear(self.gate.irreps_in, self.gate.irreps_in)
        self.self_connection = o3.Linear(irreps, self.gate.irreps_in)
        self.norm = avg_neighbors ** -0.5

    def forward(self, h, src, dst, edge_sh, edge_radial):
        if self.per_edge:
            messages = self.tp(h[src], edge_sh, self.radial(edge_radial))
        else:
            messages = self.tp(h[src], edge_sh) * self.radial(edge_radial)
        summed = torch.zeros(len(h), messages.shape[1], dtype=h.dtype).index_add_(0, dst, messages)
        return self.gate(self.post(summed * self.norm) + self.self_connection(h))


def linear_then_uvu(irreps: o3.Irreps, irreps_sh, *radial) -> Interaction:
    """The project's Interaction on half the channels, fed by an o3.Linear hidden -> half (its forward unchanged)."""
    half = o3.Irreps([(max(1, mul // 2), ir) for mul, ir in irreps])
    block = Interaction(half, irreps, irreps_sh, *radial)
    block.pre = o3.Linear(irreps, half)
    block.self_connection = o3.Linear(irreps, block.gate.irreps_in)
    return block


def variants(irreps, irreps_sh, c):
    radial = (c.radial_basis, c.radial_hidden, c.avg_neighbors)
    return {
        "uvu": lambda: Interaction(irreps, irreps, irreps_sh, *radial),
        "fctp-edge": lambda: FCTPInteraction(irreps, irreps_sh, *radial, per_edge=True),
        "fctp-shared": lambda: FCTPInteraction(irreps, irreps_sh, *radial, per_edge=False),
        "linear-then-uvu": lambda: linear_then_uvu(irreps, irreps_sh, *radial),
    }


def load_batch(config, n: int) -> dict[str, torch.Tensor]:
    """The first `n` molecules of the sample SDF whose elements the preset knows."""
    known = set(config.elements)
    mols = [s for s in read_structures("sample_data/molecules.sdf")
            if not isinstance(s, Failure) and set(map(int, s.numbers)) <= known]
    if len(mols) < n:
        raise SystemExit(f"only {len(mols)} usable molecules, asked for {n}")
    return collate(mols[:n], config.elements)


def timings(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn; the fns are interleaved so that load from other processes hits all alike."""
    times = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def equivariance_error(block, irreps, h, pos, src, dst, encoder) -> float:
    """max |f(Rx) - D(R) f(x)| / max |f(x)| over a random rotation and a random rotoinversion."""
    worst = 0.0
    with torch.no_grad():
        out = block(h, src, dst, *encoder.edge_features(pos[src] - pos[dst]))
        for rot in (o3.rand_matrix(), -o3.rand_matrix()):
            pos_r = pos @ rot.T
            h_r = h @ irreps.D_from_matrix(rot).T
            out_r = block(h_r, src, dst, *encoder.edge_features(pos_r[src] - pos_r[dst]))
            err = (out_r - out @ irreps.D_from_matrix(rot).T).abs().max() / out.abs().max()
            worst = max(worst, float(err))
    return worst


def bench(preset_name: str, lmax: int, n_mols: int, repeats: int) -> list[dict]:
    config = preset(preset_name, sh_lmax=lmax)
    batch = load_batch(config, n_mols)
    layout = Layout(batch[BATCH], batch[N_ATOMS])
    pos = batch[POSITIONS]
    src, dst = build_edges(pos, layout, config.graph, config.cutoff, config.knn)
    encoder = Encoder(config)
    sh, radial = encoder.edge_features(pos[src] - pos[dst])
    irreps = o3.Irreps(config.hidden_irreps)
    torch.manual_seed(0)
    h = irreps.randn(len(pos), -1)
    blocks = {}
    for name, make in variants(irreps, encoder.irreps_sh, config).items():
        torch.manual_seed(0)
        blocks[name] = make()

    def forward(block):
        with torch.no_grad():
            block(h, src, dst, sh, radial)

    def forward_backward(block):
        block.zero_grad(set_to_none=True)
        block(h, src, dst, sh, radial).square().mean().backward()

    fns = {(name, kind): (lambda b=block, f=f: f(b)) for name, block in blocks.items()
           for kind, f in (("fwd", forward), ("fb", forward_backward))}
    t = timings(fns, repeats)
    rows = []
    for name, block in blocks.items():
        err = equivariance_error(block, irreps, h, pos, src, dst, encoder)
        rows.append({"preset": preset_name, "lmax": lmax, "layer": name,
                     "params": sum(p.numel() for p in block.parameters()), "atoms": len(pos), "edges": len(src),
                     "fwd_ms": 1e3 * t[name, "fwd"], "fb_ms": 1e3 * t[name, "fb"], "mols_s": n_mols / t[name, "fb"],
                     "eq_err": err})
        print(f"  {preset_name} lmax={lmax} {name:16s} fwd+bwd {1e3 * t[name, 'fb']:8.1f} ms  equivariance "
              f"{err:.1e} {'ok' if err < 1e-4 else 'FAIL'}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [("| preset | sh lmax | layer | params | atoms | edges | fwd ms | fwd+bwd ms | mol/s (fwd+bwd) "
              "| vs uvu | equiv. err |"), "|" + "---|" * 11]
    for r in rows:
        base = next(b for b in rows if b["preset"] == r["preset"] and b["lmax"] == r["lmax"] and b["layer"] == "uvu")
        lines.append(f"| {r['preset']} | {r['lmax']} | {r['layer']} | {r['params']:,} | {r['atoms']} | {r['edges']:,} "
                     f"| {r['fwd_ms']:.1f} | {r['fb_ms']:.1f} | {r['mols_s']:.0f} | "
                     f"{base['fb_ms'] / r['fb_ms']:.2f}x | {r['eq_err']:.1e} |")
    return "\n".join(lines)


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process), to see who else was running."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", nargs="+", default=["medium"], help="one or more presets")
    parser.add_argument("--lmax", type=int, nargs="+", default=[1, 2], help="spherical-harmonics lmax values")
    parser.add_argument("--batch", type=int, default=32, help="molecules per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median) after 2 warm-ups")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"nproc {os.cpu_count()}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"e3nn {e3nn.__version__}, batch {args.batch} molecules", flush=True)
    (busy0, own0), wall0 = cpu_seconds(), time.perf_counter()
    rows = [r for p in args.preset for lmax in args.lmax for r in bench(p, lmax, args.batch, args.repeats)]
    print(table(rows))
    (busy1, own1), wall = cpu_seconds(), time.perf_counter() - wall0
    other = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall * os.cpu_count())
    print(f"\n{wall:.0f} s wall; other processes used {100 * other:.0f}% of the machine meanwhile"
          f"{' -- timings are contaminated, rerun on a quiet machine' if other > 0.05 else ''}")
    if any(r["eq_err"] >= 1e-4 for r in rows):
        raise SystemExit("equivariance check failed")


if __name__ == "__main__":
    main()
