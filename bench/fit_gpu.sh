#!/bin/bash
# The fit (--fit-steps) validated on a GPU: the CUDA tests, then every held-out structure of each set
# of runs/default_sise against a moved, renumbered copy (bench/fit_invariance.py), merged into one table.
# Here, first, the held-out structures as runs small enough to take along (QM9 7.5 MB):
#   for s in QM9 drug-like Si/Se; do python bench/fit_invariance.py --run runs/default_sise --set "$s" \
#       --subset-to "gpu/held_$(echo $s | tr -d /)"; done
# On the GPU machine, with gpu/whl holding cp312 wheels of rdkit, ase, e3nn 0.6.0 and plyfile (as
# recipes/default_model/gpu_lease.sh says) and $OUT a folder for the results:
#   bash bench/fit_gpu.sh
# The fit with z's frame-free part held (session 23's candidate for issue 10):
#   STEPS=400 FIT_OPTS=--fit-hold-identity bash bench/fit_gpu.sh
# Session 15 (one H100, the shipped fit): QM9 in 190 s at batch 512; a smoke test on the CPU:
#   DEVICE=cpu SHARD=0/2000 SKIP_PIP=1 SKIP_TESTS=1 OUT=/tmp/fit bash bench/fit_gpu.sh
set -u
[ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHL:-gpu/whl}/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
DEV=${DEVICE:-cuda}; B=${B:-512}; STEPS=${STEPS:-200}; SHARD=${SHARD:-0/1}; FIT_OPTS=${FIT_OPTS:-}
mkdir -p $OUT
[ -n "${SKIP_TESTS:-}" ] || timeout 120 python3 -m pytest -o addopts="" -q -p no:cacheprovider tests/test_device.py -rs > $OUT/cuda_tests.log 2>&1
for s in QM9 drug-like Si/Se; do
  tag=$(echo $s | tr -d /)
  python3 bench/fit_invariance.py --run gpu/held_$tag --set "$s" --fit-steps $STEPS $FIT_OPTS --shard $SHARD --device $DEV \
      --batch-size $B --by-size -o $OUT/fit_$tag.json 2> $OUT/fit_$tag.err > /dev/null
done
python3 bench/fit_invariance.py --merge $OUT/fit_*.json --json $OUT/summary.json | tee $OUT/summary.md
