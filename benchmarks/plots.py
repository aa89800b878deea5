"""PNG plots of benchmark runs: draws against ground truth, quality against steps."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from numpyro_cds.diagnostics import flatten_samples  # noqa: E402

from .methods import scds_steps  # noqa: E402

__all__ = ["plot_target", "plot_steps"]


def plot_target(target, runs, exact, reference, plots_dir) -> str:
    """Scatter of the first two coordinates (a histogram in 1-D) of each method.

    Panels: ground truth, SCDS(1), SCDS(N), SCDS(1)+MCMC, SCDS-paper(1) and NUTS,
    where present.

    Returns:
        The path of the PNG written.
    """
    os.makedirs(plots_dir, exist_ok=True)
    by_method = {run.method: run for run in runs}
    scds = sorted((m for m in by_method if scds_steps(m)), key=scds_steps)
    candidates = scds[:1] + scds[-1:] + ["SCDS(1)+MCMC", "SCDS-paper(1)", "NUTS"]
    shown = [m for m in candidates if m in by_method]
    if exact is not None:
        truth, label = exact[:, :2], "exact"
        names = [f"x[{i + 1}]" for i in range(truth.shape[1])]
    else:
        names = list(reference)[:2]
        truth, label = np.stack([reference[n] for n in names], 1), "reference"
    fig, axes = plt.subplots(
        1, len(shown) + 1, figsize=(3.2 * (len(shown) + 1), 3.2), squeeze=False
    )
    axes = axes[0]
    panels = [(label, truth)]
    for method in shown:
        flat = flatten_samples(by_method[method].samples)
        panels.append((method, np.stack([flat[n] for n in names], 1)))
    low = np.percentile(truth, 0.5, axis=0)
    high = np.percentile(truth, 99.5, axis=0)
    pad = 0.1 * (high - low)
    for ax, (title, points) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
        ax.set_xlabel(names[0])
        if len(names) == 1:
            ax.hist(points[:, 0], bins=50, range=(low[0] - pad[0], high[0] + pad[0]))
            continue
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.3)
        ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
    axes[0].set_ylabel(names[1] if len(names) > 1 else "count")
    fig.suptitle(target.name)
    fig.tight_layout()
    path = os.path.join(plots_dir, f"{target.name}.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_steps(results: dict, plots_dir: str) -> str | None:
    """Sinkhorn (synthetic) or worst mean error (posteriors) of SCDS against steps.

    Returns:
        The path of the PNG written, or None without SCDS rows.
    """
    curves = {"Sinkhorn": [], "max |mean error| / ref sd": []}
    for name, target in results["targets"].items():
        rows = [r for r in target["rows"] if scds_steps(r["method"])]
        if not rows:
            continue
        steps = [scds_steps(r["method"]) for r in rows]
        if "sinkhorn" in rows[0]["metrics"]:
            values = [r["metrics"]["sinkhorn"] for r in rows]
            curves["Sinkhorn"].append((name, steps, values))
        elif "max_mean_error" in rows[0]["metrics"]:
            values = [r["metrics"]["max_mean_error"] for r in rows]
            curves["max |mean error| / ref sd"].append((name, steps, values))
    curves = {label: lines for label, lines in curves.items() if lines}
    if not curves:
        return None
    os.makedirs(plots_dir, exist_ok=True)
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.5))
    for ax, (ylabel, lines) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        for name, steps, values in lines:
            ax.plot(steps, values, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = os.path.join(plots_dir, "steps.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
