"""The bench's report: ``report.md`` and PNG figures from its ``results.json`` content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..curriculum import SCHEDULES
from ..engine.progress import duration_text
from ..files import write_text_atomically
from .bench import budget_label

# The papers' claims and the thresholds the project holds the bench to (docs/benchmarks.md).
CLAIMS = {
    "pgps-efficiency": ("same Dice in 44% of the training time", "mean Dice within 0.5 points of constant in at most 50% of its time",
                        lambda s: s["dice_points_vs_constant"] >= -0.5 and s["time_ratio_median"] <= 0.50),
    "pgps-performance": ("+1.28% relative Dice in 89% of the time", "mean Dice at least 1% (relative) above constant in at most 95% of its time",
                         lambda s: s["relative_dice_change"] >= 0.01 and s["time_ratio_median"] <= 0.95),
}


ZOOM_SHARE = 0.4
"""The share of the time axis, at its end, that dice_vs_time.png's right panel shows enlarged."""


def schedule_colour(name: str) -> tuple[float, float, float, float]:
    """The colour of a schedule (``NAME`` or ``NAME+pdl``) in every figure, whatever order the bench's
    ``--schedules`` gave (RGBA; grey for another name)."""
    import matplotlib

    order = list(SCHEDULES) + [f"{schedule}+pdl" for schedule in SCHEDULES]
    return matplotlib.colormaps["tab10"](order.index(name)) if name in order else (0.5, 0.5, 0.5, 1.0)


def write_figures(results: dict[str, Any], out: Path) -> list[Path]:
    """dice_vs_time.png, patch_and_batch.png, class_balance.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    names = list(results["summary"])
    colours = {name: schedule_colour(name) for name in names}
    written = []

    # Left: the whole run. Right: its last ZOOM_SHARE of the time, the y axis fitted to the Dice there, where the
    # schedules' end points differ by tenths of a point that the whole-run scale hides.
    fig, (whole, late) = plt.subplots(1, 2, figsize=(12, 4.5))
    end = max(p["training_seconds"] for run in runs for p in run["curve"]) / 60
    zoom_from = end * (1 - ZOOM_SHARE)
    late_dice = []
    for name in names:
        for i, run in enumerate(r for r in runs if r["schedule"] == name):
            xs = [p["training_seconds"] / 60 for p in run["curve"]]
            ys = [p["mean_dice"] for p in run["curve"]]
            for ax in (whole, late):
                ax.plot(xs, ys, "o-", color=colours[name], alpha=0.8, label=name if i == 0 else None, markersize=3)
            late.plot(xs[-1:], ys[-1:], "s", color=colours[name], markersize=7)
            if xs[-1] < zoom_from:  # ended before the window: its final Dice as a dotted line
                late.axhline(ys[-1], color=colours[name], linestyle=":")
            late_dice += [y for x, y in zip(xs, ys) if x >= zoom_from] + ys[-1:]
    whole.set_title(f"Dice against training time ({results['device']}, one line per seed)", fontsize=10)
    late.set_title(f"the last {ZOOM_SHARE:.0%} of the time, zoomed\nsquares: each run's final Dice; dotted: "
                   "that of a run that ended earlier", fontsize=10)
    late.set_xlim(zoom_from, end * 1.02)
    if late_dice:
        spread = max(late_dice) - min(late_dice)
        late.set_ylim(min(late_dice) - 0.1 * spread - 1e-3, max(late_dice) + 0.1 * spread + 1e-3)
    for ax in (whole, late):
        ax.set_xlabel("training time (min, validation excluded)")
        ax.set_ylabel("held-out mean Dice")
        ax.grid(alpha=0.3)
    whole.legend()
    fig.tight_layout()
    written.append(_save(fig, out / "dice_vs_time.png"))

    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        run = next(r for r in runs if r["schedule"] == name)
        per_epoch = run["epochs"] + run["epochs"][-1:]  # repeat the last so its step spans the final epoch
        epochs = [e["epoch"] + 1 for e in run["epochs"]] + [run["epochs"][-1]["epoch"] + 2]
        for axis, label in enumerate("ZYX"):
            ax.step(epochs, [e["patch"][axis] for e in per_epoch], where="post", label=f"patch {label}")
        twin = ax.twinx()
        twin.step(epochs, [e["batch"] for e in per_epoch], where="post", color="black", linestyle="--", label="batch")
        twin.set_ylabel("batch")
        ax.set_ylabel("voxels")
        ax.set_title(f"{name} (seed 0; random schedules show each epoch's last draw)", fontsize=9)
        if ax is axes[0, 0]:
            ax.legend(loc="lower right", fontsize=7)
            twin.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    written.append(_save(fig, out / "patch_and_batch.png"))

    growing = [n for n in names if n.startswith("pgps")] or names
    fig, axes = plt.subplots(1, len(growing), figsize=(6 * len(growing), 4), squeeze=False)
    for ax, name in zip(axes[0], growing):
        run = next(r for r in runs if r["schedule"] == name)
        labels = run["label_names"]
        stages = run["class_balance"]
        xs = list(range(1, len(stages) + 1))
        for k in range(1, len(labels)):
            line = ax.plot(xs, [s["class_fractions"][k] for s in stages], "o-", label=f"{labels[k]} in patches")
            ax.axhline(run["volume_class_fractions"][k], color=line[0].get_color(), linestyle=":", label=f"{labels[k]} in volumes")
        ax.set_xticks(xs)
        ax.set_xticklabels(["x".join(map(str, s["patch"])) for s in stages], rotation=60, fontsize=7)
        ax.set_ylabel("voxel fraction")
        ax.set_title(f"class balance per stage: {name} (seed 0)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out / "class_balance.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _seeds(settings: dict[str, Any]) -> str:
    """"3 seed(s)", or "seed 2" / "seeds 3-5" when the bench did not start at seed 0."""
    first, count = settings.get("first_seed", 0), settings["seeds"]
    if first == 0:
        return f"{count} seed(s)"
    return f"seed {first}" if count == 1 else f"seeds {first}-{first + count - 1}"


def _length(results: dict[str, Any]) -> str:
    """"28 epochs", or for a bench at equal time the budget and each schedule's planned epochs."""
    budget = results["settings"].get("time_budget")
    if budget is None:
        return f"{results['runs'][0]['epochs'][-1]['epoch'] + 1} epochs"
    planned: dict[str, set] = {}
    for run in results["runs"]:
        planned.setdefault(run["schedule"], set()).add(run.get("planned_epochs"))
    each = ", ".join(f"{name} {'/'.join(str(e) for e in sorted(epochs))}" for name, epochs in planned.items())
    return f"equal wall time: every run planned to {duration_text(budget)} (epochs: {each})"


def _ahead_of_constant(summary: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """One line per schedule but constant: ahead of or behind constant at equal wall time, by how much on average,
    per seed, and in how many seeds."""
    by_seed = {r["seed"]: r["mean_dice"] for r in runs if r["schedule"] == "constant"}
    lines = []
    for name, entry in summary.items():
        if name == "constant":
            continue
        if entry["dice_points_vs_constant"] is None:
            lines.append(f"**{name}**: constant has no run at this budget yet.")
            continue
        differences = [100 * (r["mean_dice"] - by_seed[r["seed"]]) for r in runs
                       if r["schedule"] == name and r["seed"] in by_seed]
        ahead = sum(d > 0 for d in differences)
        verdict = "ahead of" if entry["dice_points_vs_constant"] > 0 else "behind"
        lines.append(f"**{name}** at equal wall time: {verdict} constant by {abs(entry['dice_points_vs_constant']):.2f} "
                     f"Dice points on average (per seed: {', '.join(f'{d:+.2f}' for d in differences)}; ahead in "
                     f"{ahead} of {len(differences)} seeds).")
    return lines


def write_report(results: dict[str, Any], out: Path) -> Path:
    """report.md: settings, the table, the verdict on each claim."""
    settings = results["settings"]
    summary = results["summary"]
    lines = [
        "# napari-pgps bench",
        "",
        f"Data: `{settings['data']}`; profile `{settings['profile']}` ({_seeds(settings)}, "
        f"{_length(results)}); device: {results['device']}"
        + (f"; every run from the configuration `{settings['config']}`." if settings.get("config") else "."),
        ("Dice: each run's final model on the test cases (`evaluate --split test`)"
         if results["runs"][0].get("dice_on") == "test" else "Dice: held-out (validation) cases")
        + ", sliding window at the final patch size. Time: training steps only, "
        "validation excluded; ratios are medians over seeds of each seed's ratio to its constant run.",
        "",
        f"| schedule | mean Dice (± sd over seeds) | vs constant | time ratio | reached constant's Dice | time to constant's Dice | peak memory ({results['memory_kind']}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        reach = f"{s['time_to_constant_dice_ratio_median']:.2f}" if s["time_to_constant_dice_ratio_median"] is not None else "never"
        lines.append(
            f"| {name} | {s['mean_dice']:.4f} ± {s['dice_std']:.4f} | {s['dice_points_vs_constant']:+.2f} points "
            f"({100 * s['relative_dice_change']:+.2f}%) | {s['time_ratio_median']:.2f} | {s['reached_constant_dice']} | {reach} | "
            f"{s['peak_memory_mib_median']:.0f} |"
        )
    lines += ["", "## What it shows", ""]
    if settings.get("time_budget") is not None:
        lines += _equal_time_verdicts(results)
        lines += ["", "Figures: `dice_vs_time.png`, `patch_and_batch.png`, `class_balance.png`; raw numbers: "
                  "`results.json`.", ""]
        path = out / "report.md"
        write_text_atomically(path, "\n".join(lines))
        return path
    for name, (paper, rule, holds) in CLAIMS.items():
        if name not in summary:
            continue
        s = summary[name]
        verdict = "holds" if holds(s) else "does NOT hold"
        lines.append(
            f"- **{name}**: {s['mean_dice']:.4f} mean Dice ({s['dice_points_vs_constant']:+.2f} points, "
            f"{100 * s['relative_dice_change']:+.2f}% relative) in {100 * s['time_ratio_median']:.0f}% of constant's training time. "
            f"The paper: {paper}. Our bar, {rule}, {verdict} here."
        )
    lines += ["", "Figures: `dice_vs_time.png`, `patch_and_batch.png`, `class_balance.png`; raw numbers: `results.json`.", ""]
    path = out / "report.md"
    write_text_atomically(path, "\n".join(lines))
    return path


def _equal_time_verdicts(results: dict[str, Any]) -> list[str]:
    """At equal wall time: is each schedule ahead of constant, by how much, and in how many seeds."""
    lines = [f"- {line}" for line in _ahead_of_constant(results["summary"], results["runs"])]
    budget = results["settings"]["time_budget"]
    for name in results["summary"]:
        mine = [r for r in results["runs"] if r["schedule"] == name]
        walls = [r["wall_seconds"] for r in mine]
        epochs = ", ".join(f"{r['completed_epochs']}/{r['planned_epochs']}" for r in mine)
        lines.append(f"- {name}: whole run {min(walls):.0f}-{max(walls):.0f} s of wall time against the budget's "
                     f"{budget:.0f} s (at most {100 * (max(walls) / budget - 1):+.1f}%); epochs completed/planned: {epochs}.")
    return lines


# -- a bench at several budgets ------------------------------------------------------------
def write_budget_report(results: dict[str, Any], out: Path) -> list[Path]:
    """A bench at several budgets (:func:`napari_pgps.tasks.bench.summarize_budgets`): report.md (the table of
    budget x schedule, the check that Dice rises with the budget, PGPS against constant at each budget) and
    dice_vs_budget.png."""
    settings, budgets = results["settings"], results["budgets"]
    on_test = results["dice_on"] == "test"
    fraction = settings.get("test_fraction") or 0
    cases = next((r["test_cases"] for r in results["runs"] if "test_cases" in r), None)
    lines = [
        "# napari-pgps bench: Dice against the time budget",
        "",
        f"Data: `{settings['data']}`; profile `{settings['profile']}`; device: {results['device']}; budgets "
        f"{', '.join(b['label'] for b in budgets)} (shortest first); seeds from {settings.get('first_seed', 0)}"
        + (f", the first only above {budget_label(settings['max_seeded_budget'])}"
           if settings.get("max_seeded_budget") else "")
        + (f"; every run from the configuration `{settings['config']}`." if settings.get("config") else "."),
        (f"Dice: each run's final model (the weights it keeps) on the {cases} test cases ({fraction:.0%} of the data, "
         "set aside before the validation split with a fixed seed: the same for every run, never trained, validated "
         "or chosen on), scored as `napari-pgps evaluate --split test`. \"best ckpt\": the test Dice of the "
         "checkpoint the validation cases chose." if on_test else
         "Dice: the final validation (held-out) Dice; with no test split the validation cases also chose the best "
         "checkpoint, so this is not an honest estimate (give --test-fraction)."),
        "Time: training = the steps only; wall = the whole run (preparation, steps, validations, checkpoints).",
        "",
        "| budget | schedule | mean Dice ± sd | seeds | best ckpt | vs constant | training s | wall s | epochs | steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for budget in budgets:
        for name, s in budget["summary"].items():
            best = "-" if s["best_checkpoint_test_dice"] is None else f"{s['best_checkpoint_test_dice']:.4f}"
            versus = "-" if s["dice_points_vs_constant"] is None else f"{s['dice_points_vs_constant']:+.2f} points"
            lines.append(f"| {budget['label']} | {name} | {s['mean_dice']:.4f} ± {s['dice_std']:.4f} | {s['seeds']} | "
                         f"{best} | {versus} | {s['training_seconds_median']:.0f} | "
                         f"{s['wall_seconds_median']:.0f} | {s['epochs_median']:g} | {s['steps_median']:g} |")
    lines += ["", "## Each run", "",
              "| budget | seed | schedule | Dice | best ckpt | last validation Dice | training s | wall s | epochs | "
              "steps (at the final patch) | s a step at the final patch |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_run_row(run) for run in sorted(results["runs"], key=lambda r: (r["budget"], r["seed"]))]
    lines += ["", "## Does Dice rise with the budget?", ""]
    lines += [f"- {row['schedule']}: {row['shorter']} {row['shorter_dice']:.4f} -> {row['longer']} "
              f"{row['longer_dice']:.4f} ({100 * (row['longer_dice'] - row['shorter_dice']):+.2f} points)"
              + ("" if row["rises"] else " **LOWER than the shorter budget**")
              for row in results["monotonicity"]] or ["- one budget measured so far."]
    lines += ["", "## PGPS against constant at each budget", ""]
    for budget in budgets:
        mine = [r for r in results["runs"] if r["budget"] == budget["budget"]]
        lines += [f"- {budget['label']}: " + line for line in _ahead_of_constant(budget["summary"], mine)]
    lines += ["", "Figure: `dice_vs_budget.png`; raw numbers: `results.json`; each run: `runs/BUDGET/`.", ""]
    path = out / "report.md"
    write_text_atomically(path, "\n".join(lines))
    return [path, write_budget_figure(results, out)]


def _run_row(run: dict[str, Any]) -> str:
    """One run's row of the budget report's table of runs."""
    best = "-" if run.get("best_checkpoint_test_dice") is None else f"{run['best_checkpoint_test_dice']:.4f}"
    final = run["epochs"][-1]["patch"] if run["epochs"] else None
    at_final = sum(e["steps"] for e in run["epochs"] if e["patch"] == final)
    seconds = run.get("final_patch_step_seconds")
    return (f"| {budget_label(run['budget'])} | {run['seed']} | {run['schedule']} | {run['mean_dice']:.4f} | {best} | "
            f"{run.get('validation_dice', run['mean_dice']):.4f} | {run['training_seconds']:.0f} | "
            f"{run['wall_seconds']:.0f} | {run['completed_epochs']} | {sum(e['steps'] for e in run['epochs'])} "
            f"({at_final}) | {'-' if seconds is None else f'{seconds:.2f}'} |")


def write_budget_figure(results: dict[str, Any], out: Path) -> Path:
    """dice_vs_budget.png: Dice against wall time (log axis), a line through each schedule's mean at each budget
    (at its runs' median wall time) and each run as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in results["settings"]["schedules"] if any(name in b["summary"] for b in results["budgets"])]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        colour = schedule_colour(name)
        runs = [r for r in results["runs"] if r["schedule"] == name]
        ax.plot([r["wall_seconds"] / 60 for r in runs], [r["mean_dice"] for r in runs], "o", color=colour, alpha=0.4,
                markersize=4)
        means = [b["summary"][name] for b in results["budgets"] if name in b["summary"]]
        ax.plot([m["wall_seconds_median"] / 60 for m in means], [m["mean_dice"] for m in means], "s-", color=colour,
                label=name)
    ax.set_xscale("log")
    ticks = [b["budget"] / 60 for b in results["budgets"]]
    ax.set_xticks(ticks, [b["label"] for b in results["budgets"]])
    ax.minorticks_off()
    ax.set_xlabel("wall time of the whole run (min, log scale; ticks at the budgets)")
    ax.set_ylabel(f"{'test' if results['dice_on'] == 'test' else 'validation'} mean Dice")
    ax.set_title(f"{Path(results['settings']['data']).name}: Dice against the time budget ({results['device']})\n"
                 "squares: mean over seeds; dots: each seed", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, out / "dice_vs_budget.png")
