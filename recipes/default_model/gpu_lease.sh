#!/bin/bash
# One GPU lease (about 9 minutes): the CUDA tests, `groupae train --device cuda`, two timed trainings
# side by side on the one GPU, each sized by its own timing probe to end BUDGET seconds after the start, and then, with the
# GPU free again, issue 12's embed figures (bench/embed_gpu.sh). Run from the repository root, on the
# GPU machine, with $OUT a folder for the results and gpu/ holding what that machine lacks (it has
# torch, no RDKit, no network):
#   gpu/{qm9,druglike,sise}.xyz.gz       python recipes/default_model/to_xyz.py, then copied there, or as
#   gpu/xz/*.xyz.xz                      (zcat | xz -9) to fit the lease's 64 MiB with the wheels: made .gz here
#   gpu/whl/*.whl (or $WHL/*.whl)        cp312 manylinux wheels of rdkit, ase, e3nn 0.6.0, plyfile (pip download;
#                                        rdkit without its rdkit/Contrib folder, unused there, to fit 64 MiB)
#   BUDGET=400 bash recipes/default_model/gpu_lease.sh
# A smoke test on CPU, with a few hundred structures per file in gpu/ (session 9: 236 s, both models
# returned): DEVICE=cpu BATCH=16 BUDGET=200 SKIP_PIP=1 NO_EMBED=1 bash recipes/default_model/gpu_lease.sh
# The shipped default model is the sise256 run of this script as it stood at commit 8f75c7e
# (recipes/default_model/README.md). The third lease (commit 4d2420a) continued it twice at batch 256,
# lr 1e-3, no warm-up, tau 0.025, on its data and split (--split name): validation fell from 0.847
# to 0.789 A in 4 epochs of 165k samples (bench/RESULTS.md, "The third GPU lease"), each run's step
# most likely bound by the CPU (0.09 s per step alone or side by side; bench/step_ops.py: about 5,800
# operators dispatched per step, whatever the batch), and both stopped at 4 of 8 epochs: the timing
# probe ran fewer steps than it divided by (fixed in timed_train.py). So this lease takes four times
# the structures per step, batch 1024 at lr 2e-3 (the square-root rule), both runs continuing the
# shipped model, --pace 1.2 (two runs on one GPU) so that their learning rate anneals before the
# deadline:
#   cont1024  the mix of structures it was trained on (92% QM9): against the third lease's cont at
#             batch 256, per sample and per second
#   mix1024   drug-like and Si/Se structures four times each per pass (23% and 3% of the samples, from
#             7.2% and 1.0%): the decoder draws large molecules worst, and fitting z to each structure
#             (--fit-steps) leaves the decoder as the limit there
# INIT=<a checkpoint in the tree> continues another model instead of the shipped one: a run a lease
# returned (commit it first: the next lease is a fresh machine) goes on in the next.
# A file named several times is read several times: its structures come that many times per pass,
# under their own names, so the split by name keeps every copy on its molecule's side. Each run's
# best.ckpt comes back as ship.py writes it (weights and config, 3.9 MB: the lease returns files of
# up to 16 MiB, and a training checkpoint with its optimizer state is 12 MB). Score them as the shipped
# model was scored, on its own held-out structures (evaluate.py --run with the shipped run's cache and
# split, --fit-steps 0 and 100), not on the runs' validation, whose subset differs between the two.
set -u
T0=$(date +%s)
[ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHL:-gpu/whl}/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
for n in qm9 druglike sise; do
  [ -f gpu/$n.xyz.gz ] || python3 -c "import gzip, lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), gzip.open(sys.argv[2], 'wb', compresslevel=1))" gpu/xz/$n.xyz.xz gpu/$n.xyz.gz
done
LOG=$OUT/cuda_tests.log
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $LOG 2>&1
python3 -c "import sys,torch,e3nn,rdkit;print(sys.version.split()[0], torch.__version__, e3nn.__version__, rdkit.__version__, torch.cuda.get_device_name())" >> $LOG 2>&1
DL=$((T0 + ${BUDGET:-400}))
mkdir -p /tmp/runs
RUNS="cont1024 mix1024"
ALL="gpu/qm9.xyz.gz gpu/druglike.xyz.gz gpu/sise.xyz.gz"
MIX="$ALL gpu/druglike.xyz.gz gpu/druglike.xyz.gz gpu/druglike.xyz.gz gpu/sise.xyz.gz gpu/sise.xyz.gz gpu/sise.xyz.gz"
for spec in "cont1024 ALL" "mix1024 MIX"; do
  set -- $spec
  timeout $((DL + 30 - $(date +%s))) python3 recipes/default_model/timed_train.py bench/designs/rmsd_loss.yaml /tmp/runs/$1 \
    --deadline $DL --inputs ${!2} --batch-size ${BATCH:-1024} --lr 0.002 --split name --init ${INIT:-default} --warmup-epochs 0 --tau 0.025 \
    --pace 1.2 ${DEVICE:+--device $DEVICE} > $OUT/$1.log 2>&1 &
done
( python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_device.py -rs >> $LOG 2>&1  # no pytest-xdist there
  echo "== groupae train --device cuda (CLI)" >> $LOG
  python3 -m groupae_cli train sample_data/molecules.sdf -o /tmp/cli_run --preset tiny --epochs 2 \
    --device ${DEVICE:-cuda} >> $LOG 2>&1; echo "rc=$?" >> $LOG ) &
wait
# the lease returns at most 8 files of 16 MiB: each run's model as ship.py writes it, the rest in one tar
for r in $RUNS; do
  [ -f /tmp/runs/$r/best.ckpt ] && python3 recipes/default_model/ship.py /tmp/runs/$r/best.ckpt --inference-dtype float64 \
    -o $OUT/$r.ckpt >> $LOG 2>&1
done
(cd /tmp/runs && tar -cf $OUT/runs.tar $(for r in $RUNS; do echo $r/{metrics.csv,timed.json,config.yaml}; done)) >> $LOG 2>&1
echo "trainings done at $(( $(date +%s) - T0 )) s" >> $LOG
[ -n "${NO_EMBED:-}" ] || SKIP_PIP=1 bash bench/embed_gpu.sh
echo "total $(( $(date +%s) - T0 )) s" >> $LOG
