"""Embed throughput and peak memory against RDKit parsing the same file, in one run.

    python bench/embed_throughput.py --model default --records 10000 100000 --device cpu

For each size N an SDF of N drug-like records is built by repeating `sample_data/molecules.sdf`
(8-77 atoms, median 28). Then, each in a fresh subprocess (so peak memory is per run):
- RDKit alone reading it (ForwardSDMolSupplier, no sanitisation, hydrogens kept);
- groupae's reader alone on its first 20,000 records, one process, as embed's parse workers read
  (`read_items(..., geometry_only=True)`): each worker's ceiling;
- `groupae embed` end to end (process start to exit: start-up, parse, encode, write HDF5), once per
  `--workers` value, with the CPU time of its main process alone (not its parse workers'): near the
  wall time, the main process sets the pace;
- the model alone (`--model-only`): records parsed first, then only `encode_batch` is timed, at
  the same batch size, on the same device: the rate the pipeline would reach if parsing and
  writing were free.
And the time to the first record: `groupae embed` of a one-record file, process start to the first
HDF5 append, with `import torch` alone timed in its own process beside it.
Prints Markdown tables (records/s, seconds, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from groupae_cli.cli.embed import CPU_BATCH, GPU_BATCH
from groupae_cli.io.parallel import gpu_wanted

ROOT = Path(__file__).resolve().parent.parent

RDKIT = """
import sys
from rdkit import Chem, RDLogger
RDLogger.DisableLog("rdApp.*")
n = sum(m is not None for m in Chem.ForwardSDMolSupplier(open(sys.argv[1], "rb"), sanitize=False, removeHs=False))
print(n)
"""

READER = """
import itertools, json, sys, time
from groupae_cli.io import read_items
t = time.perf_counter()
n = sum(1 for _ in itertools.islice(read_items([sys.argv[1]], geometry_only=True), 20000))
print(json.dumps([n, time.perf_counter() - t]))
"""
MODEL_ONLY = """
import json, sys, time
import torch
from groupae_cli._api import load_model
from groupae_cli.embed import encode_batch, usable
from groupae_cli.io import Structure, read_structures
path, model, device, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
net = load_model(model, device)
records = [s for s in read_structures(path) if isinstance(s, Structure) and usable(s, net) is None]
dev = next(net.parameters()).device
encode_batch(net, records[:batch], dev)  # warm-up
if dev.type == "cuda":
    torch.cuda.synchronize()
t = time.perf_counter()
for i in range(0, len(records), batch):
    encode_batch(net, records[i:i + batch], dev)  # (copies its results to the host: synchronised)
print(json.dumps([len(records), time.perf_counter() - t]))
"""

#: seconds since this process started (its start time in /proc, against the uptime)
SINCE_START = """
import os, sys
def since_start():
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
"""

#: `groupae embed` with its first HDF5 append timed. The writer's module is patched as it is imported
#: (an import hook), so that nothing is imported before the command would import it: the command's
#: start-up is what users get (its first worker is forked as it starts, before numpy and h5py)
FIRST_RECORD = SINCE_START + """
import importlib.abc, importlib.machinery
class TimeFirstAppend(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "groupae_cli.io.hdf5":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            append = module.RecordWriter.append
            def first(self, *args, **kwargs):
                if not getattr(module, "_first", False):
                    module._first = True
                    sys.stderr.write(f"FIRST {since_start():.3f}\\n")
                return append(self, *args, **kwargs)
            module.RecordWriter.append = first
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, TimeFirstAppend())
from groupae_cli.early_worker import console_main
sys.argv = ["groupae", *sys.argv[1:]]
console_main()
"""

#: `groupae embed`, then its own CPU seconds (user + system, its threads, not its worker processes)
#: on stderr, also where it ends by os._exit (embed's quick exit)
SELF_CPU = """
import os, resource, sys
def report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    sys.stderr.write(f"SELF_CPU {r.ru_utime + r.ru_stime:.3f}\\n")
    sys.stderr.flush()
_exit = os._exit
def exit_reporting(status):
    report()
    _exit(status)
os._exit = exit_reporting
from groupae_cli.app import main
sys.argv = ["groupae", *sys.argv[1:]]
try:
    main()
finally:
    report()
"""
TORCH = SINCE_START + """
import torch
print(since_start())
"""

WRAP = ("import json,subprocess,sys,time,resource;"
        "t=time.perf_counter();r=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "print(json.dumps([time.perf_counter()-t,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024,"
        "r.returncode,r.stdout,r.stderr[-2000:]]))")


def timed(cmd: list[str]) -> tuple[float, float, str, str]:
    """(seconds, peak RSS MB of the child, its stdout, the end of its stderr), in a wrapper process of
    its own (RUSAGE_CHILDREN keeps the maximum over all children, so each measurement needs a fresh
    parent)."""
    seconds, peak, code, out, err = json.loads(subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True,
                                                              text=True, check=True).stdout)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n{err}")
    return seconds, peak, out, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--records", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--batch-size", type=int, default=None, help="default: embed's own default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", nargs="+", default=["default"], help="values of embed --workers ('default': its own)")
    ap.add_argument("--repeats", type=int, default=1, help="end-to-end runs per setting (the median is shown)")
    ap.add_argument("--no-model-only", action="store_true")
    ap.add_argument("--no-first-record", action="store_true", help="skip the time to the first record (5 runs)")
    ap.add_argument("--encode-in-workers", action="store_true",
                    help="pass --encode-in-workers to embed (on a GPU: the model in each worker process)")
    args = ap.parse_args()
    blocks = (ROOT / "sample_data" / "molecules.sdf").read_text().split("$$$$\n")[:-1]
    batch = [] if args.batch_size is None else ["--batch-size", str(args.batch_size)]
    batch += ["--encode-in-workers"] if args.encode_in_workers else []
    rows, model_rows, readers = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one.sdf"
        one.write_text(blocks[0] + "$$$$\n")
        # with Python's bytecode caches, as an installed package has them (pip compiles a wheel's modules;
        # an editable install writes them on its first run), and without where this environment says so
        environments = {"bytecode cached": {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}}
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            environments["PYTHONDONTWRITEBYTECODE=1 (no bytecode caches written)"] = dict(os.environ)
        firsts: dict[str, tuple[list, list]] = {}  # environment: (times to the first record, `import torch` times)
        first_record = [sys.executable, "-c", FIRST_RECORD, "embed", str(one), "-o", f"{tmp}/one.h5", "--quiet",
                        "--model", args.model, "--device", args.device]
        for name, env in environments.items() if not args.no_first_record else ():
            subprocess.run(first_record, capture_output=True, check=True, env=env)  # writes the caches
            times, torches = firsts[name] = [], []
            for _ in range(5):
                run = subprocess.run(first_record, capture_output=True, text=True, check=True, env=env)
                times.append(float(next(line for line in run.stderr.splitlines() if line.startswith("FIRST")).split()[1]))
                torches.append(float(subprocess.run([sys.executable, "-c", TORCH], capture_output=True, text=True,
                                                    check=True, env=env).stdout))
        for n in args.records:
            path = Path(tmp) / f"mols{n}.sdf"
            with path.open("w") as f:
                for i in range(n):
                    f.write(blocks[i % len(blocks)] + "$$$$\n")
            rd_s, rd_mb, _, _ = timed([sys.executable, "-c", RDKIT, str(path)])
            if n == max(args.records):  # the rate printed: the largest file's
                readers.append(json.loads(timed([sys.executable, "-c", READER, str(path)])[2]))
            for workers in args.workers:
                extra = [] if workers == "default" else ["--workers", workers]
                runs = []
                for _ in range(args.repeats):
                    em_s, em_mb, _, err = timed([sys.executable, "-c", SELF_CPU, "embed", str(path), "-o",
                                                 f"{tmp}/out{n}.h5", "--model", args.model, "--device", args.device,
                                                 "--quiet", *batch, *extra])
                    cpu = [float(line.split()[1]) for line in err.splitlines() if line.startswith("SELF_CPU")]
                    runs.append((em_s, em_mb, cpu[-1]))
                em_s, em_mb, em_cpu = sorted(runs)[len(runs) // 2]
                rows.append((n, workers, rd_s, rd_mb, em_s, em_mb, em_cpu))
            if not args.no_model_only and n == max(args.records):
                size = args.batch_size or (GPU_BATCH if gpu_wanted(args.device) else CPU_BATCH)  # embed's default
                _, _, out, _ = timed([sys.executable, "-c", MODEL_ONLY, str(path), args.model, args.device, str(size)])
                count, seconds = json.loads(out)
                model_rows.append((count, size, seconds))
    print(f"model: {args.model}, device {args.device}, batch size {args.batch_size or 'default'}"
          + (", the model in the worker processes" if args.encode_in_workers else ""))
    print()
    for name, (times, torches) in firsts.items():
        print(f"time to the first record (one-record file, process start to the first HDF5 append), {name}, median "
              f"of 5: {sorted(times)[2]:.2f} s (range {min(times):.2f}-{max(times):.2f}); `import torch` alone: "
              f"{sorted(torches)[2]:.2f} s")
    print()
    print("| records | workers | RDKit parse (s) | RDKit (rec/s) | RDKit peak (MB) | groupae embed (s) | embed (rec/s) "
          "| embed peak (MB) | embed / RDKit time | embed main process CPU (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, workers, rd_s, rd_mb, em_s, em_mb, em_cpu in rows:
        print(f"| {n:,} | {workers} | {rd_s:.2f} | {n / rd_s:,.0f} | {rd_mb:.0f} | {em_s:.2f} | {n / em_s:,.0f} | "
              f"{em_mb:.0f} | {em_s / rd_s:.1f}x | {em_cpu:.2f} |")
    for count, seconds in readers:
        print()
        print(f"groupae's reader alone (one process, as embed's workers read): {count:,} records in {seconds:.2f} s = "
              f"{count / seconds:,.0f} records/s")
    for count, size, seconds in model_rows:
        print()
        print(f"model only ({args.device}, batch {size}): {count:,} records in {seconds:.2f} s = {count / seconds:,.0f} "
              f"records/s")


if __name__ == "__main__":
    main()
