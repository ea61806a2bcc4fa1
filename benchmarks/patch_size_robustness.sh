#!/usr/bin/env bash
# Patch-size robustness benchmark: FP, AP, HN and PGPS models evaluated across inference patch sizes.
#
#   bash benchmarks/patch_size_robustness.sh DATA_DIR OUT_DIR [THREADS_PER_RUN] [FP_RUN]
#
# Trains, in parallel, each pinned to its own THREADS_PER_RUN cores (taskset) with as many torch threads:
#   AP    napari-pgps train --schedule augment
#   HN    napari-pgps train --architecture hypernet   (trains with --schedule augment)
#   PGPS  napari-pgps train --schedule pgps-performance
#   FP    napari-pgps train (constant schedule), unless FP_RUN already holds a finished run
#         (e.g. runs/default, the documented default CPU run)
# into OUT_DIR/{ap,hn,pgps,fp}, skipping any run that already holds checkpoint_final.pt. Then evaluates every
# model on its held-out cases at SIZES (default 16:64:8, isotropic) plus its training patch, writing
# OUT_DIR/{FP,AP,HN,PGPS}.json, and draws OUT_DIR/dice_vs_patch_size.png with the table OUT_DIR/table.md.
# Logs (with wall times) go to OUT_DIR/logs. Every run uses the same seed, hence the same validation cases.
#
# Environment: NAPARI_PGPS (default .venv/bin/napari-pgps), PYTHON (default .venv/bin/python),
# SIZES (default "16:64:8"), TRAIN_ARGS (extra flags for every training, e.g. for a quick smoke test:
# "--epochs 1 --iterations-per-epoch 2 --max-cases 6").
# Needs about 4 x THREADS_PER_RUN cores (3 x when FP_RUN is given); the HN run takes about 1.5 GB of memory.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
DATA=$1
OUT=$2
THREADS=${3:-4}
FP_RUN=${4:-}
NAPARI_PGPS=${NAPARI_PGPS:-.venv/bin/napari-pgps}
PYTHON=${PYTHON:-.venv/bin/python}
SIZES=${SIZES:-16:64:8}
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
HERE=$(cd "$(dirname "$0")" && pwd)

[[ -f "$DATA/dataset.json" ]] || { echo "$DATA: no dataset.json; give a dataset folder" >&2; exit 2; }
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "THREADS_PER_RUN must be a positive whole number, got '$THREADS'" >&2; exit 2; }
mkdir -p "$OUT/logs"
CORES=$(nproc)
slot=0

# run_pinned LOG CMD...: run CMD in the background on the next THREADS cores (wrapping round), logging its wall time.
run_pinned() {
    local log=$1; shift
    local first=$(( (slot * THREADS) % CORES ))
    local last=$(( first + THREADS - 1 < CORES ? first + THREADS - 1 : CORES - 1 ))
    slot=$(( slot + 1 ))
    local pin=()
    command -v taskset > /dev/null && pin=(taskset -c "$first-$last")
    (
        start=$SECONDS
        OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "${pin[@]}" "$@"
        echo "wall time: $(( SECONDS - start )) s on cores $first-$last"
    ) > "$log" 2>&1 &
    PIDS+=($!)
}

wait_all() {
    local failed=0
    for pid in "${PIDS[@]}"; do wait "$pid" || failed=1; done
    PIDS=()
    if [[ $failed -ne 0 ]]; then echo "a job failed; see $OUT/logs" >&2; exit 1; fi
}

declare -A RUNS=([AP]="$OUT/ap" [HN]="$OUT/hn" [PGPS]="$OUT/pgps" [FP]="${FP_RUN:-$OUT/fp}")
declare -A FLAGS=([AP]="--schedule augment" [HN]="--architecture hypernet" [PGPS]="--schedule pgps-performance" [FP]="")
PIDS=()
for kind in FP AP HN PGPS; do
    run=${RUNS[$kind]}
    if [[ -f "$run/checkpoint_final.pt" ]]; then
        echo "$kind: using the finished run in $run"
        continue
    fi
    [[ $kind == FP && -n "$FP_RUN" ]] && { echo "$FP_RUN: no checkpoint_final.pt; train it first" >&2; exit 2; }
    echo "$kind: training into $run (log $OUT/logs/train_$kind.log)"
    read -r -a flags <<< "${FLAGS[$kind]}"
    run_pinned "$OUT/logs/train_$kind.log" "$NAPARI_PGPS" train --data "$DATA" --out "$run" --device cpu "${flags[@]}" "${EXTRA[@]}"
done
wait_all

reports=()
for kind in FP AP HN PGPS; do
    run=${RUNS[$kind]}
    patch=$("$PYTHON" -c "import sys; from napari_pgps.config import RunConfig; print('x'.join(map(str, RunConfig.load(sys.argv[1]).model.patch_size)))" "$run/config.yaml")
    echo "$kind: evaluating at $SIZES and $patch (log $OUT/logs/evaluate_$kind.log)"
    run_pinned "$OUT/logs/evaluate_$kind.log" "$NAPARI_PGPS" evaluate --model "$run" --data "$DATA" --split validation \
        --device cpu --patch-sizes $SIZES "$patch" --json "$OUT/$kind.json"
    reports+=("$kind=$OUT/$kind.json")
done
wait_all

"$PYTHON" "$HERE/patch_size_robustness.py" --out "$OUT/dice_vs_patch_size.png" "${reports[@]}" | tee "$OUT/table.md"
grep -h "wall time\|finished after" "$OUT"/logs/*.log || true
