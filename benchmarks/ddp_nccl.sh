#!/usr/bin/env bash
# DDP with NCCL on CUDA GPUs: one torchrun training on a dataset, then its Dice on the held-out cases.
#
#   bash benchmarks/ddp_nccl.sh DATA_DIR OUT_DIR [GPUS]
#
# Runs `torchrun --standalone --nproc_per_node=GPUS -m napari_pgps train --device cuda --schedule pgps-performance`
# into OUT_DIR/run (GPUS defaults to 1: a single-rank NCCL run still goes through the process group, DDP and
# the gathered loss), then `napari-pgps evaluate --split validation`. Prints the training's wall time, its
# training seconds and the mean Dice; the logs and OUT_DIR/evaluate.json stay in OUT_DIR.
#
# Environment: PYTHON (default .venv/bin/python); TRAIN_ARGS (default "--epochs 8 --iterations-per-epoch 100",
# a few minutes on one GPU on Task04_Hippocampus; "" keeps the GPU defaults of 50 epochs x 250 steps);
# DEVICE (default cuda; cpu smoke-tests the script with Gloo).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
DATA=$1
OUT=$2
GPUS=${3:-1}
PYTHON=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
read -r -a EXTRA <<< "${TRAIN_ARGS---epochs 8 --iterations-per-epoch 100}"

[[ -f "$DATA/dataset.json" ]] || { echo "$DATA: no dataset.json; give a dataset folder" >&2; exit 2; }
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || { echo "GPUS must be a positive whole number, got '$GPUS'" >&2; exit 2; }
[[ ! -e "$OUT/run" ]] || { echo "$OUT/run already exists; give a fresh OUT_DIR" >&2; exit 2; }
mkdir -p "$OUT"

start=$(date +%s)
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" -m napari_pgps train \
    --data "$DATA" --out "$OUT/run" --device "$DEVICE" --schedule pgps-performance "${EXTRA[@]}" 2>&1 | tee "$OUT/train.log"
wall=$(( $(date +%s) - start ))
"$PYTHON" -m napari_pgps evaluate --model "$OUT/run" --data "$DATA" --split validation --device "$DEVICE" \
    --json "$OUT/evaluate.json" > "$OUT/evaluate.log"
"$PYTHON" - "$OUT" "$wall" "$GPUS" <<'EOF'
import json, sys
from pathlib import Path

out, wall, gpus = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
finished = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()][-1]
report = json.loads((out / "evaluate.json").read_text())
print(f"{gpus} process(es): {wall} s wall for the training ({finished['training_seconds']:.0f} s in steps), "
      f"{finished['steps']} steps; held-out mean Dice {report['mean_dice']:.4f} "
      + ", ".join(f"{k} {v:.4f}" for k, v in report["dice_per_label"].items()))
EOF
