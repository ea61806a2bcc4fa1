"""What each part of the data pipeline is worth: the same training with one part changed at a time.

    python benchmarks/data_parts.py --data DIR --out DIR --variants mirror,nnunet,none,crop-rule \\
        [--parallel 2] [--flags "--epochs 8"] [--base base.yaml]

Each variant is ``napari-pgps train`` with the base configuration (``--base``, optional) plus the variant's
settings; with ``--parallel N`` N trainings run at once, each pinned to its own cores (``taskset``) with
``cores / N`` threads, so they see the same load. Per variant: held-out mean Dice at the end (the trainer's
validation on the run's validation split), training time (steps only), the share of step time spent waiting
for batches, and the peak resident memory of the training process (``os.wait4``, as ``/usr/bin/time -v``
reports it). Writes ``results.json`` and ``report.md`` in ``--out``.

Variants:
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

VARIANTS = {
    "mirror": {"data": {"augmentation": "mirror"}},
    "nnunet": {"data": {"augmentation": "nnunet"}},
    "none": {"data": {"augmentation": "none"}},
    "crop-rule": {"data": {"oversampling": "crop"}},
    "batch-rule": {"data": {"oversampling": "batch"}},
    "no-resampling": {"preprocessing": {"resample": False}},
    "no-crop": {"preprocessing": {"crop_to_nonzero": False}},
    "workers-0": {"data": {"loader_workers": 0}},
    "workers-1": {"data": {"loader_workers": 1}},
    "workers-2": {"data": {"loader_workers": 2}},
    "cases-10": {"data": {"max_cases": 10}},
    "cases-40": {"data": {"max_cases": 40}},
}
__doc__ += "".join(f"    {name}: {settings}\n" for name, settings in VARIANTS.items())


def merged(base: dict, change: dict) -> dict:
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for section, values in change.items():
        out.setdefault(section, {}).update(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", required=True, help="comma-separated names of VARIANTS")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once (each on cores / N)")
    parser.add_argument("--flags", default="", help="extra napari-pgps train flags for every variant")
    parser.add_argument("--base", help="base configuration (YAML) for every variant")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.base).read_text()) if args.base else {}
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    cores = sorted(os.sched_getaffinity(0))
    threads = max(1, len(cores) // args.parallel)
    results, waiting = {}, list(names)
    running: dict[int, tuple[str, subprocess.Popen, float, object]] = {}
    slots = list(range(args.parallel))
    while waiting or running:
        while waiting and slots:
            slot, name = slots.pop(0), waiting.pop(0)
            config = out / f"{name}.yaml"
            config.write_text(yaml.safe_dump(merged(base, VARIANTS[name])))
            command = [sys.executable, "-m", "napari_pgps", "train", "--data", args.data, "--out", str(out / name),
                       "--config", str(config), "--device", "cpu", *args.flags.split()]
            mine = cores[slot * threads:(slot + 1) * threads]
            if args.parallel > 1 and len(mine) == threads:
                command = ["taskset", "-c", ",".join(map(str, mine)), *command]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            log = open(out / f"{name}.log", "w")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[process.pid] = (name, process, time.perf_counter(), log, slot)
            print(f"{name}: started on cores {mine}", flush=True)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, process, started, log, slot = running.pop(pid)
        log.close()
        slots.append(slot)
        results[name] = {"exit_code": os.waitstatus_to_exitcode(status), "wall_seconds": time.perf_counter() - started,
                         "peak_rss_mb": usage.ru_maxrss / 1024, **measure(out / name)}
        print(f"{name}: {results[name]}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(report(results, args, threads))
    print((out / "report.md").read_text())


def measure(run_dir: Path) -> dict:
    """The run's last validation Dice, training time, data waiting share and step count, from its log."""
    from napari_pgps.engine import fold, read_events

    if not (run_dir / "metrics.jsonl").is_file():
        return {}
    progress = fold(read_events(run_dir))
    last = progress.validations[-1].result if progress.validations else None
    return {
        "mean_dice": last.mean_dice if last else None,
        "dice_per_label": last.dice_per_label if last else None,
        "training_seconds": progress.training_seconds,
        "data_wait_share": progress.data_wait_share,
        "steps": progress.steps_done,
        "training_cases": progress.started.training_cases,
        "validation_cases": progress.started.validation_cases,
    }


def report(results: dict, args, threads: int) -> str:
    lines = [f"Data: `{args.data}`; flags `{args.flags}`; {args.parallel} training(s) at once, {threads} thread(s) each.",
             "", "| variant | mean Dice | training time (s) | waiting for data | peak RSS (MB) | training / validation cases |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        dice = f"{r['mean_dice']:.4f}" if r.get("mean_dice") is not None else "-"
        share = f"{100 * r['data_wait_share']:.1f}%" if r.get("data_wait_share") is not None else "-"
        lines.append(f"| {name} | {dice} | {r.get('training_seconds', 0):.0f} | {share} | {r['peak_rss_mb']:.0f} | "
                     f"{r.get('training_cases', '-')} / {r.get('validation_cases', '-')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
