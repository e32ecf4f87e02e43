"""The recipe's SDF files as plain XYZ (name on the comment line, 4 decimals: all the SDF holds), for
machines without RDKit (the GPU lease that trained the shipped model).

    python recipes/default_model/to_xyz.py          # data/default_model/{qm9,druglike,sise}.xyz.gz

Checked on every record: the XYZ parses back to the same elements, positions (bit for bit) and
names, so `groupae train` gets the same cache and the same split from either form.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

from groupae_cli.io import Failure, read_structures
from groupae_cli.io.xyz import _SYMBOL_TEXT

SYMBOLS = _SYMBOL_TEXT.split()


def frame(s) -> str:
    rows = "".join(f"{SYMBOLS[z]} {x:.4f} {y:.4f} {w:.4f}\n" for z, (x, y, w) in zip(s.numbers, s.positions))
    return f"{len(s.numbers)}\n{s.name}\n{rows}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/default_model"))
    parser.add_argument("names", nargs="*", default=["qm9", "druglike", "sise"], help="which files (default: all three)")
    args = parser.parse_args(argv)
    for name in args.names:
        source, target = args.data / f"{name}.sdf.gz", args.data / f"{name}.xyz.gz"
        records = [r for r in read_structures(source) if not isinstance(r, Failure)]
        for r in records:
            if not np.array_equal(np.round(r.positions, 4), r.positions):
                raise SystemExit(f"{source}: {r.name} has coordinates finer than 4 decimals")
        with gzip.GzipFile(target, "wb", compresslevel=9, mtime=0) as f:
            f.write("".join(frame(r) for r in records).encode())
        back = list(read_structures(target))
        same = len(back) == len(records) and all(
            a.name == b.name and np.array_equal(a.numbers, b.numbers) and np.array_equal(a.positions, b.positions)
            for a, b in zip(records, back))
        if not same:
            raise SystemExit(f"{target}: does not read back as {source}")
        print(f"{target}: {len(records)} records, {target.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
