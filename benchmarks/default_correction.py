"""Which ``correction`` default gives the best quality per second (issue 4).

Usage (from the repository root, after the cpu suites have run)::

    python -m benchmarks.default_correction

Reads every ``results/<suite>-<budget>/results.json`` that has the rows ``SCDS(1)``,
``SCDS(1)+resample`` and ``SCDS(1)+MCMC`` (one trained sampler, three ``correction``
settings) and tabulates, per target, each setting's error (the worst standardised
mean error against reference draws, or the Sinkhorn cost against exact draws) and its
total seconds (training plus drawing: what ``run`` costs a user).  Writes
``results/default-correction/section.md`` for ``BENCHMARKS.md``.
"""

from __future__ import annotations

import glob
import json
import os

SETTINGS = {"None": "SCDS(1)", "resample": "SCDS(1)+resample", "mcmc": "SCDS(1)+MCMC"}


def _error(metrics: dict) -> tuple[str, float] | None:
    if "max_mean_error" in metrics:
        return "mean err", metrics["max_mean_error"]
    if "sinkhorn" in metrics:
        return "Sinkhorn", metrics["sinkhorn"]
    return None


def collect(results_dir: str = "results") -> list[dict]:
    """One entry per target with all three settings' error and seconds."""
    entries = []
    for file in sorted(glob.glob(os.path.join(results_dir, "*", "results.json"))):
        with open(file) as f:
            results = json.load(f)
        if results.get("budget") not in ("cpu", "gpu"):
            continue
        for name, target in results["targets"].items():
            rows = {row["method"]: row for row in target["rows"]}
            if not all(method in rows for method in SETTINGS.values()):
                continue
            errors = {s: _error(rows[m]["metrics"]) for s, m in SETTINGS.items()}
            if any(error is None for error in errors.values()):
                continue
            entries.append(
                {
                    "suite": results["suite"],
                    "target": name,
                    "metric": errors["None"][0],
                    "error": {s: errors[s][1] for s in SETTINGS},
                    "seconds": {
                        s: rows[m]["train_seconds"] + rows[m]["sample_seconds"]
                        for s, m in SETTINGS.items()
                    },
                }
            )
    return entries


def render(entries: list[dict]) -> str:
    """The BENCHMARKS.md section."""
    lines = [
        "## Default correction: quality per second (issue 4)",
        "",
        "Command: `python -m benchmarks.default_correction` (reads the results above "
        "that have all three rows: one trained sampler, 1-step draws with "
        '`correction=None`, `"resample"` and `"mcmc"` at the `CDSInference` '
        "defaults). Seconds are training plus drawing, what `run` costs.",
        "",
        "| suite | target | metric | None | resample | mcmc | seconds None / "
        "resample / mcmc | best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best_counts = dict.fromkeys(SETTINGS, 0)
    for entry in entries:
        error, seconds = entry["error"], entry["seconds"]
        best = min(SETTINGS, key=lambda s: error[s])
        best_counts[best] += 1
        lines.append(
            f"| {entry['suite']} | {entry['target']} | {entry['metric']} | "
            + " | ".join(f"{error[s]:.3g}" for s in SETTINGS)
            + " | "
            + " / ".join(f"{seconds[s]:.0f}" for s in SETTINGS)
            + f" | {best} |"
        )
    extra = [
        (e["seconds"]["mcmc"] - e["seconds"]["None"]) / e["seconds"]["None"]
        for e in entries
    ]
    posteriors = [e for e in entries if e["metric"] == "mean err"]
    worst = {
        s: max((e["error"][s] for e in posteriors), default=float("nan"))
        for s in SETTINGS
    }
    lines += [
        "",
        "Worst standardised mean error over the posteriors: "
        + ", ".join(f"{s} {worst[s]:.3g}" for s in SETTINGS)
        + ".",
        "",
        f"Lowest error: {', '.join(f'{s} on {n}' for s, n in best_counts.items())} "
        f"of {len(entries)} targets. The MCMC correction added a median "
        f"{100 * sorted(extra)[len(extra) // 2]:.0f} % to the seconds of `run` "
        "(training dominates)."
        if entries
        else "No results with all three rows.",
    ]
    return "\n".join(lines)


def main():
    """Write ``results/default-correction/section.md`` and print it."""
    section = render(collect())
    os.makedirs(os.path.join("results", "default-correction"), exist_ok=True)
    with open(os.path.join("results", "default-correction", "section.md"), "w") as f:
        f.write(section + "\n")
    print(section)


if __name__ == "__main__":
    main()
