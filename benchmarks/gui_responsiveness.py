"""How smooth napari stays while the Train widget trains, and how fast Stop lands.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/gui_responsiveness.py [--runs 3] [--seconds 30]

For each run: open the demo viewer, start the demo schedule on the CPU, wait
for the first steps (warm-up excluded), then let a 20 ms QTimer tick on the GUI
thread for SECONDS while training goes on; record the tick rate and the longest
gap between ticks. Then press Stop and time until the worker has finished
(the run's last checkpoint kept). Prints one JSON line per run and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_pgps.demo import open_demo_viewer


def one_run(seconds: float) -> dict:
    viewer, (_, trainer, _, _), docks = open_demo_viewer(device="cpu")
    viewer.window.show()
    docks[1].raise_()
    trainer.run_root.setText(tempfile.mkdtemp(prefix="napari-pgps-gui-bench-"))
    trainer.start_training()
    end = time.time() + 300
    while len(trainer.steps) < 3 and time.time() < end:
        QApplication.processEvents()
        time.sleep(0.01)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    steps_before = len(trainer.steps)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.002)
    timer.stop()
    steps = len(trainer.steps) - steps_before
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    asked = time.perf_counter()
    trainer.stop_training()
    while trainer.worker is not None:
        QApplication.processEvents()
        time.sleep(0.002)
    stop_latency = time.perf_counter() - asked
    kept = (trainer.run_dir / "checkpoint_last.pt").is_file()
    viewer.close()
    return {
        "ticks_per_second": len(ticks) / seconds,
        "median_gap_ms": 1000 * statistics.median(gaps),
        "longest_gap_ms": 1000 * max(gaps),
        "training_steps_during_measurement": steps,
        "stop_latency_s": stop_latency,
        "checkpoint_kept": kept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        result = one_run(args.seconds)
        results.append(result)
        print(json.dumps(result), flush=True)
    summary = {key: statistics.median(r[key] for r in results) for key in results[0] if key != "checkpoint_kept"}
    summary["worst_longest_gap_ms"] = max(r["longest_gap_ms"] for r in results)
    summary["worst_stop_latency_s"] = max(r["stop_latency_s"] for r in results)
    print("MEDIANS", json.dumps(summary))


if __name__ == "__main__":
    main()
