"""The z fit (`--fit-steps`) on a device: its rate, and each structure against a moved copy.

Reads structure files, fits every record and a randomly rotated, translated and renumbered copy of
it (batches of --batch-size in file order, the copies drawn on the CPU with seed 0, so the same on
every device), and records per structure the RMSD through the group element (Å), the element
accuracy, z's drift max |z(gX) - z(X)| / max |z(X)| and z itself. The shipped model in its
inference precision. Two outputs compared (`--compare cpu.json cuda.json`) give how far the
devices' fits part, structure by structure.

    python bench/fit_device.py --held-out runs/default_sise QM9 256 gpu/fit/qm9.xyz \
        --lead 108308,74605,55384,6911,54945,106603,65175
    python bench/fit_device.py --held-out runs/default_sise drug-like 128 gpu/fit/druglike.xyz
    python bench/fit_device.py gpu/fit/qm9.xyz gpu/fit/druglike.xyz --device cuda -o cuda.json
    python bench/fit_device.py --compare cpu.json cuda.json

`--held-out RUN SET COUNT PATH` writes the COUNT held-out structures of SET with the lowest cache
index (those of `--lead`, cache indices, first) as extended XYZ, for a machine without the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from fit_invariance import (  # bench/: the same figures, from a run's cache
    TOLERANCE,
    add_figures,
    fit_pair,
    held_out_of,
)

from groupae_cli.data import centred_batch
from groupae_cli.io import read_structures
from groupae_cli.io.checkpoint import load_model


def measure_file(model, path: str, device: str, batch_size: int) -> dict:
    records = [s for s in read_structures(path, geometry_only=True) if hasattr(s, "numbers")]
    generator = torch.Generator().manual_seed(0)
    rows: dict[str, list] = {"name": [], "rmsd": [], "element_acc": [], "drift": [], "z": []}
    seconds = 0.0
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        batch, a, b, took = fit_pair(model, centred_batch(chunk, model.config.elements, model.dtype)[0], generator,
                                     device)
        seconds += took
        add_figures(rows, model, batch, a, b)
        rows["z"] += a["z"].cpu().tolist()
        rows["name"] += [s.name for s in chunk]
        print(f"{path} on {device}: {len(rows['name'])}/{len(records)}, {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"seconds": seconds, "fits_per_second": 2 * len(records) / seconds, **rows}


def summary_row(name: str, part: dict) -> str:
    rmsd, drift = np.array(part["rmsd"]), np.array(part["drift"])
    return (f"| {name} | {len(rmsd)} | {part['seconds']:.1f} | {part['fits_per_second']:.1f} | "
            f"{np.median(rmsd):.3f} / {rmsd.mean():.3f} | {np.mean(part['element_acc']):.4f} | "
            f"{drift.max():.1e}, {(drift > TOLERANCE).sum()} |")


def compare(paths: list[Path]) -> None:
    a, b = (json.loads(p.read_text()) for p in paths)
    print(f"{a['device']} ({a['card']}) against {b['device']} ({b['card']}), {a['fit_steps']} fit steps")
    print("| file | structures | z: max relative difference, median | structures past 1e-5 "
          "| RMSD difference: median, max (Å) |")
    print("|---|---|---|---|---|")
    for name in [name for name in a["files"] if name in b["files"]]:  # a run cut short may lack some
        x, y = a["files"][name], b["files"][name]
        if x["name"] != y["name"]:
            raise SystemExit(f"{name}: the two outputs hold different structures")
        za, zb = np.array(x["z"]), np.array(y["z"])
        rel = np.abs(za - zb).max(1) / np.abs(za).max(1)
        dr = np.abs(np.array(x["rmsd"]) - np.array(y["rmsd"]))
        print(f"| {name} | {len(rel)} | {rel.max():.1e}, {np.median(rel):.1e} | {(rel > TOLERANCE).sum()} | "
              f"{np.median(dr):.1e}, {dr.max():.1e} |")
        worst = np.argsort(rel)[::-1][:3]
        print("  largest: " + ", ".join(f"{x['name'][i]} {rel[i]:.1e}" for i in worst), file=sys.stderr)


def write_held_out(run: Path, name: str, count: int, path: Path, lead: list[int]) -> None:
    from ase import Atoms
    from ase.io import write

    from groupae_cli.train.dataset import StructureSet

    data = StructureSet.load(run / "cache.npz")
    rest = [int(i) for i in held_out_of(run, data, name) if i not in lead]
    frames = []
    for i in (lead + rest)[:count]:
        a, b = data.offsets[i], data.offsets[i + 1]
        frames.append(Atoms(numbers=data.numbers[a:b], positions=data.positions[a:b],
                            info={"name": f"{data.names[i]}_idx{i}"}))
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, frames, format="extxyz")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="default", help="a checkpoint path or a shipped model's name")
    parser.add_argument("--fit-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64],
                        help="one run per size; the output keeps the first's figures, the others' rates")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (on the CPU)")
    parser.add_argument("-o", "--output", type=Path)
    parser.add_argument("--compare", type=Path, nargs=2, help="two outputs: how far their fits part")
    parser.add_argument("--held-out", nargs=4, metavar=("RUN", "SET", "COUNT", "PATH"),
                        help="write a run's held-out structures of one set as extended XYZ")
    parser.add_argument("--lead", default="", help="with --held-out: cache indices to write first")
    args = parser.parse_args(argv)
    if args.held_out:
        run, name, count, path = args.held_out
        write_held_out(Path(run), name, int(count), Path(path), [int(i) for i in args.lead.split(",") if i])
        return 0
    if args.compare:
        compare(args.compare)
        return 0
    if not args.files or args.output is None:
        parser.error("files and -o are needed to measure")
    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.device).eval()
    model.fit_steps = args.fit_steps
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {"device": args.device, "card": card, "torch": torch.__version__, "fit_steps": args.fit_steps,
              "batch_size": args.batch_size[0], "files": {}, "rates": []}
    print(f"{card}, torch {torch.__version__}, {args.fit_steps} fit steps, {model.dtype}")
    print("| file | structures | seconds | fits/s | RMSD median / mean (Å) | element acc. "
          f"| z drift: worst, past {TOLERANCE:g} |")
    print("|---|---|---|---|---|---|---|")
    steps, model.fit_steps = model.fit_steps, 3  # warm-up: the first batch's kernels, allocations and caches
    measure_file(model, args.files[0], args.device, args.batch_size[0])
    model.fit_steps = steps
    for i, size in enumerate(args.batch_size):
        for path in args.files:
            part = measure_file(model, path, args.device, size)
            print(summary_row(f"{Path(path).name}, batch {size}", part), flush=True)
            result["rates"].append({"file": path, "batch_size": size, "seconds": part["seconds"],
                                    "fits_per_second": part["fits_per_second"]})
            if i == 0:
                result["files"][path] = part
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(result))  # after each file: what a time limit leaves
    return 0


if __name__ == "__main__":
    sys.exit(main())
