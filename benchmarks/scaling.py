"""Scaling curves: cost of one training iteration and its memory, against d and N.

Against the dimension: the log-Gaussian Cox process on square grids of 2 ... 40 cells a
side (d = 4 ... 1600), at the default batch (256) and ``N`` (64).  Against the number of
SDE steps: ``N = 16 ... 256`` on the 64-D LGCP (an 8 x 8 grid), batch 256.  Each point
is a method's training step: ``dds`` and ``cdds`` (the default CDSInference trains a
DDS teacher, then the CDDS student) and ``scds``; seconds per iteration are the median
over compiled chunks, memory is what XLA plans for one compiled step (arguments,
outputs and temporaries; :mod:`benchmarks.throughput`).

    python -m benchmarks.scaling --out results/scaling

writes ``scaling.json``, ``scaling.md`` (tables) and two log-log plots, and takes about
20 minutes on 2 CPU cores (``--quick`` for a toy run).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax

from numpyro_cds.target import target_from_model

from .report import docstring_parser, machine_info
from .targets import lgcp_target
from .throughput import training_cost

METHODS = ("dds", "cdds", "scds")
#: Measured along N as well: the trainings whose memory grows with N, with
#: ``ConsistencyConfig(save_memory=True)``.
SAVE_MEMORY_METHODS = ("dds", "scds")
GRID_SIZES = (2, 4, 8, 16, 24, 32, 40)
STEP_COUNTS = (16, 32, 64, 128, 256)
SIZES = {
    "full": dict(batch_size=256, num_sde_steps=64, n_curve_grid=8, chunk_size=2),
    "quick": dict(batch_size=16, num_sde_steps=8, n_curve_grid=2, chunk_size=1),
}


def _lgcp_logdensity(grid_size: int):
    target = lgcp_target(grid_size)
    flat = target_from_model(jax.random.key(0), target.model, target.model_args, {})
    return flat.logdensity_fn, flat.dim


def measure(grid_sizes, step_counts, sizes: dict, methods=METHODS) -> list[dict]:
    """Every method at every grid size (default ``N``) and every ``N`` (one grid)."""
    rows = []
    points = [(g, sizes["num_sde_steps"], "dimension") for g in grid_sizes]
    points += [(sizes["n_curve_grid"], n, "steps") for n in step_counts]
    for grid_size, num_sde_steps, curve in points:
        logdensity_fn, dim = _lgcp_logdensity(grid_size)
        variants = [(m, False) for m in methods]
        if curve == "steps":
            variants += [(m, True) for m in SAVE_MEMORY_METHODS if m in methods]
        for method, save_memory in variants:
            row = training_cost(
                method,
                logdensity_fn,
                dim,
                batch_size=sizes["batch_size"],
                num_sde_steps=num_sde_steps,
                chunk_size=sizes["chunk_size"],
                num_chunks=3,
                save_memory=save_memory,
            )
            rows.append({**row, "curve": curve})
            print(
                f"{curve}: {row['method']} d={dim} N={num_sde_steps}: "
                f"{row['seconds_per_iteration']:.4g} s/iteration, "
                f"{row['step_memory_bytes'] / 1e6:.3g} MB",
                flush=True,
            )
    return rows


def memory_growth(rows: list[dict]) -> dict[str, float]:
    """Per method: largest over smallest step memory along the ``N`` curve."""
    growth = {}
    for method in {r["method"] for r in rows}:
        memory = [
            r["step_memory_bytes"]
            for r in rows
            if r["curve"] == "steps" and r["method"] == method
        ]
        if memory:
            growth[method] = max(memory) / min(memory)
    return growth


def render(results: dict) -> str:
    """Markdown tables of both curves and the memory growth along ``N``."""
    lines = []
    for curve, key, label in (
        ("dimension", "dim", "d"),
        ("steps", "num_sde_steps", "N"),
    ):
        rows = [r for r in results["rows"] if r["curve"] == curve]
        values = sorted({r[key] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        fixed = (
            f"N = {rows[0]['num_sde_steps']}"
            if curve == "dimension"
            else f"d = {rows[0]['dim']}"
        )
        lines += [
            f"Against {label} ({fixed}, batch {rows[0]['batch_size']}): seconds per "
            "iteration / step memory (MB)",
            "",
            f"| {label} | " + " | ".join(methods) + " |",
            "|---" * (len(methods) + 1) + "|",
        ]
        for value in values:
            cells = []
            for method in methods:
                (row,) = [r for r in rows if r[key] == value and r["method"] == method]
                cells.append(
                    f"{row['seconds_per_iteration']:.3g} / "
                    f"{row['step_memory_bytes'] / 1e6:.3g}"
                )
            lines.append(f"| {value} | " + " | ".join(cells) + " |")
        lines.append("")
    growth = ", ".join(
        f"{m} {g:.2f}x" for m, g in sorted(results["memory_growth_over_steps"].items())
    )
    lines.append(f"Step memory, largest over smallest along N: {growth}.")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    """Log-log plots of seconds per iteration and memory against d and against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for column, (curve, key) in enumerate(
        (("dimension", "dim"), ("steps", "num_sde_steps"))
    ):
        for method in dict.fromkeys(r["method"] for r in results["rows"]):
            rows = sorted(
                (
                    r
                    for r in results["rows"]
                    if r["curve"] == curve and r["method"] == method
                ),
                key=lambda r: r[key],
            )
            if not rows:
                continue
            x = [r[key] for r in rows]
            axes[0, column].loglog(
                x, [r["seconds_per_iteration"] for r in rows], "o-", label=method
            )
            axes[1, column].loglog(
                x, [r["step_memory_bytes"] / 1e6 for r in rows], "o-", label=method
            )
        label = "dimension d (LGCP)" if curve == "dimension" else "SDE steps N"
        axes[1, column].set_xlabel(label)
        for row in (0, 1):
            axes[row, column].set_xticks(x, [str(v) for v in x])
            axes[row, column].minorticks_off()
        axes[0, column].legend()
    axes[0, 0].set_ylabel("seconds per iteration")
    axes[1, 0].set_ylabel("step memory (MB)")
    fig.suptitle(f"{results['machine']['device']}, {results['machine']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    """Command-line entry point."""
    parser = docstring_parser(__doc__)
    parser.add_argument("--out", default=os.path.join("results", "scaling"))
    parser.add_argument("--quick", action="store_true", help="toy sizes")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    sizes = SIZES["quick" if args.quick else "full"]
    grids = GRID_SIZES[:2] if args.quick else GRID_SIZES
    steps = STEP_COUNTS[:2] if args.quick else STEP_COUNTS
    rows = measure(grids, steps, sizes)
    results = {
        "command": "python -m benchmarks.scaling " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "rows": rows,
        "memory_growth_over_steps": memory_growth(rows),
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = render(results)
    with open(os.path.join(args.out, "scaling.md"), "w") as f:
        f.write(text)
    plot(results, os.path.join(args.out, "scaling.png"))
    print(text)
    return results


if __name__ == "__main__":
    main()
