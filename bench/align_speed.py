"""Element mode's speed against an earlier version of the code, interleaved in one process.

    OMP_NUM_THREADS=1 python bench/align_speed.py [--rev HEAD] [--repeats 3] [--only sample] [--clock cpu]

Times `align(a, za, b, zb)` (element mode, in process) on the 72 pairs of bench/align.py (60
"sample" and 12 "symmetric" conformer pairs with hydrogens) with the working tree's
`groupae_cli/align.py` and with the same file at git revision `--rev`, loaded as a separate
module. The two run alternately on each pair (which runs first alternates too), so a busy machine
slows both alike; the per-pair ratio new / old is the figure to trust, the medians are given
beside it. `--clock cpu` times with the process's CPU time instead of the wall clock: on a
machine shared with other jobs it leaves out the time the process waits for a core. Both must give the same RMSD on every pair (1e-9 Å): this is a speed comparison, and
where they differ the pairs are listed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def load_revision(rev: str):
    """groupae_cli/align.py at git revision `rev`, imported as its own module."""
    source = subprocess.run(["git", "show", f"{rev}:groupae_cli/align.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "align_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("align_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    from align import sample_pairs, symmetric_pairs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="the git revision to compare with (default HEAD)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every pair with each version")
    parser.add_argument("--only", choices=["sample", "symmetric"], default=None, help="one set of pairs only")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall clock (time.perf_counter) or this process's CPU time (time.process_time)")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    current = importlib.import_module("groupae_cli.align")
    earlier = load_revision(args.rev)
    pairs = [(kind, name, a.numbers, a.positions, b.numbers, b.positions)
             for kind, name, a, b, _, _ in [*sample_pairs(), *symmetric_pairs()] if args.only in (None, kind)]
    times = {"old": np.zeros((args.repeats, len(pairs))), "new": np.zeros((args.repeats, len(pairs)))}
    rmsd = {"old": np.zeros(len(pairs)), "new": np.zeros(len(pairs))}
    for repeat in range(args.repeats):
        for i, (_, _, za, a, zb, b) in enumerate(pairs):
            order = [("old", earlier), ("new", current)]
            for label, module in order if (i + repeat) % 2 else order[::-1]:
                start = clock()
                result = module.align(a, za, b, zb)
                times[label][repeat, i] = clock() - start
                rmsd[label][i] = result.rmsd
    old, new = times["old"].min(0), times["new"].min(0)  # each pair's best of the repeats
    ratio = new / old
    differ = [pairs[i][1] for i in np.flatnonzero(np.abs(rmsd["new"] - rmsd["old"]) > 1e-9)]
    print(f"{len(pairs)} pairs, {args.repeats} repeats, against {args.rev}, {args.clock} clock; per pair the best of "
          "the repeats\n")
    print("| set | pairs | old median | new median | median of per-pair ratio new / old | same RMSD |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind in ("sample", "symmetric"):
        pick = np.array([p[0] == kind for p in pairs])
        if pick.any():
            same = sum(name not in differ for (k, name, *_), chosen in zip(pairs, pick) if chosen)
            print(f"| {kind} | {pick.sum()} | {np.median(old[pick]) * 1e3:.2f} ms | {np.median(new[pick]) * 1e3:.2f} ms | "
                  f"{np.median(ratio[pick]):.3f} | {same} / {pick.sum()} |")
    if differ:
        print("\nRMSD differs (> 1e-9 Å) on:", ", ".join(differ))


if __name__ == "__main__":
    main()
