#!/bin/bash
# Patch-size robustness with 3 seeds: FP, AP, HN trained 25 x 50 steps (no time budget), each on one thread,
# two at a time, then evaluated at the inference patch sizes of docs/benchmarks.md section 5.
cd <the repository>
export PYTHONPATH=<a checkout of the commit>/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
DATA=../shared/data/Task04_Hippocampus
job() {
  kind=$1; seed=$2; shift 2
  run=runs/ps3/$kind-s$seed
  /usr/bin/time -v .venv/bin/python -m napari_pgps.cli train --data $DATA --out $run --epochs 25 --seed $seed "$@" > $run.log 2> $run.time
  .venv/bin/python -m napari_pgps.cli evaluate --model $run --data $DATA --split validation --device cpu \
     --patch-sizes 16:64:8 40x56x40 --json runs/ps3/$kind-s$seed.json > $run-eval.log 2>&1
  echo "$(date +%T) done $kind s$seed" >> runs/ps3/queue.log
}
export -f job
export DATA
printf '%s\n' "HN 0 --architecture hypernet" "HN 1 --architecture hypernet" "HN 2 --architecture hypernet" \
  "AP 0 --schedule augment" "AP 1 --schedule augment" "AP 2 --schedule augment" "FP 0" "FP 1" "FP 2" \
  | xargs -P 2 -I{} bash -c 'job {}'
echo "$(date +%T) all done" >> runs/ps3/queue.log
