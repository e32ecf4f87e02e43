"""Embed throughput and peak memory against RDKit parsing the same file, in one run.

    python bench/embed_throughput.py --model runs/sample/best.ckpt --records 1000 10000

For each size N, an SDF of N drug-like records is built by repeating `sample_data/molecules.sdf`,
then timed in fresh subprocesses (so peak memory is per run): RDKit alone reading it
(ForwardSDMolSupplier, no sanitisation, hydrogens kept), and `groupae embed` (parse, batch, encode,
write HDF5). Prints a Markdown table: records/s, seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RDKIT = """
import sys
from rdkit import Chem, RDLogger
RDLogger.DisableLog("rdApp.*")
n = sum(m is not None for m in Chem.ForwardSDMolSupplier(open(sys.argv[1], "rb"), sanitize=False, removeHs=False))
print(n)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--records", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    blocks = (ROOT / "sample_data" / "molecules.sdf").read_text().split("$$$$\n")[:-1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.records:
            path = Path(tmp) / f"mols{n}.sdf"
            path.write_text("".join(blocks[i % len(blocks)] + "$$$$\n" for i in range(n)))
            # RUSAGE_CHILDREN keeps the maximum over all children: run each in its own interpreter
            rd_cmd = [sys.executable, "-c", RDKIT, str(path)]
            embed_cmd = [sys.executable, "-m", "groupae_cli", "embed", str(path), "-o", f"{tmp}/out{n}.h5",
                         "--model", args.model, "--device", "cpu", "--quiet", "--batch-size", str(args.batch_size)]
            wrap = [sys.executable, "-c", ("import json,subprocess,sys,time,resource;"
                    "t=time.perf_counter();subprocess.run(sys.argv[1:],check=True,capture_output=True);"
                    "print(json.dumps([time.perf_counter()-t,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024]))")]
            rd_s, rd_mb = json.loads(subprocess.run(wrap + rd_cmd, capture_output=True, text=True, check=True).stdout)
            em_s, em_mb = json.loads(subprocess.run(wrap + embed_cmd, capture_output=True, text=True, check=True).stdout)
            rows.append((n, rd_s, rd_mb, em_s, em_mb))
    print(f"model: {args.model}, batch size {args.batch_size}")
    print("| records | RDKit parse s | RDKit rec/s | RDKit peak MB | groupae embed s | embed rec/s | embed peak MB | embed / RDKit time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, rd_s, rd_mb, em_s, em_mb in rows:
        print(f"| {n} | {rd_s:.2f} | {n / rd_s:.0f} | {rd_mb:.0f} | {em_s:.2f} | {n / em_s:.0f} | {em_mb:.0f} | {em_s / rd_s:.1f}x |")


if __name__ == "__main__":
    main()
