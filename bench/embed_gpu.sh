#!/bin/bash
# GPU figures for the shipped default model: model-only encode rate (float64 as shipped, float32) and
# `groupae embed` end to end through bench/embed_throughput.py (100,000 records, several worker counts), CUDA
# against CPU.
# On the GPU machine, with gpu/whl holding cp312 wheels of rdkit, ase, e3nn 0.6.0 and plyfile (as
# recipes/default_model/gpu_lease.sh says) and $OUT a folder for the log:
#   N=100000 B=1024 WORKERS='4 8 15' ENC_WORKERS='2 4 8' bash bench/embed_gpu.sh
set -u
[ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHL:-gpu/whl}/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
DEV=${DEVICE:-cuda}; N=${N:-100000}; B=${B:-1024}
python3 - $DEV $B <<'PY' 2>&1 | tee $OUT/embed_gpu.log
import sys, time, torch
from groupae_cli.io import read_structures
from groupae_cli.io.checkpoint import load_model
from groupae_cli.data import collate
dev, bs = sys.argv[1], int(sys.argv[2])
mols = [s for s in read_structures("sample_data/molecules.sdf") if hasattr(s, "numbers")]
items = (mols * (bs // len(mols) + 1))[:bs]
print("card", torch.cuda.get_device_name() if dev == "cuda" else "cpu", torch.__version__)
for dtype in (torch.float64, torch.float32):
    m = load_model("default", dev).to(dtype)
    batch = {k: v.to(dev) for k, v in collate(items, m.config.elements, dtype).items()}
    with torch.inference_mode():
        for _ in range(3): m.encode(batch)
        if dev == "cuda": torch.cuda.synchronize()
        t = time.perf_counter(); reps = 10 if dev == "cuda" else 1
        for _ in range(reps): m.encode(batch)
        if dev == "cuda": torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / reps
    print(f"model only, {dtype}, batch {bs}: {bs / dt:,.0f} records/s")
PY
python3 - 2000 <<'PY'
import sys
blocks = open("sample_data/molecules.sdf").read().split("$$$$\n")[:-1]
n = int(sys.argv[1])
open("/tmp/big.sdf", "w").write("".join(blocks[i % len(blocks)] + "$$$$\n" for i in range(n)))
PY
# issue 12: the pipeline (parse workers, pinned memory, batch 1024 by default on a GPU) at 100,000
# records with 4, 8 and 15 parse workers: is the main process (its CPU seconds, a column of the table,
# near the wall time) or the workers' parsing (the reader's own rate, printed below it) the limit? (The
# third lease: 10,000 records at 1,293/s with the default 8 workers, 926/s in one process; the time to
# the first record, 7.0 s there, and the 10,000-record rows are in bench/RESULTS.md.)
timeout 240 python3 bench/embed_throughput.py --model default --device $DEV --records $N --workers ${WORKERS:-4 8 15} \
  --no-model-only --no-first-record | tee -a $OUT/embed_gpu.log
# the model in the workers (--encode-in-workers): each worker parses its share and encodes it on the GPU with a
# CUDA context of its own, so the per-record Python and the kernel launches spread over processes
timeout 240 python3 bench/embed_throughput.py --model default --device $DEV --records $N --workers ${ENC_WORKERS:-2 4 8} \
  --no-model-only --no-first-record --encode-in-workers | tee -a $OUT/embed_gpu.log
head -c 3000000 /tmp/big.sdf | python3 -c "import sys; t = sys.stdin.read(); sys.stdout.write(t[:t.rfind('\$\$\$\$') + 5] + '\n')" > /tmp/small.sdf
python3 -m groupae_cli embed /tmp/small.sdf -o /tmp/gpu.h5 --device $DEV --quiet
python3 -m groupae_cli embed /tmp/small.sdf -o /tmp/cpu.h5 --device cpu --quiet
python3 -c "import h5py, numpy as np; a, b = h5py.File('/tmp/gpu.h5'), h5py.File('/tmp/cpu.h5'); \
print('CUDA vs CPU, max |difference|:', {k: float(np.abs(a[k][()] - b[k][()]).max()) for k in ('embedding', 'rotation', 'translation')}, \
'orders equal:', bool(np.array_equal(a['permutation'][()], b['permutation'][()])))" | tee -a $OUT/embed_gpu.log
