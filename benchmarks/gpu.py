"""GPU check: training and drawing throughput, and GMM-grid quality at the paper budget.

Run on the machine with the accelerator, after the project's own install (nothing is
downloaded beyond the package registry: ``pip install -e ".[benchmarks]"`` and a CUDA
build of ``jax`` from PyPI, e.g. ``pip install "jax[cuda12]"``)::

    python -m benchmarks.gpu --out results/gpu

It reports, on the first device JAX sees:

1. training iterations per second at batch 512 and 2048, ``N = 128`` SDE steps, on the
   GMM grid, for the default CDSInference's two trainings (the DDS teacher and the
   CDDS student) and for SCDS, with the memory XLA plans for one step;
2. one-step draws per second (10^5 draws), without and with exact importance weights,
   and the floating-point rate XLA counts for them, beside the device's matmul rate
   at the network's layer shape (draws x width times width x width) and at 2048^3;
3. the GMM grid's quality at the paper budget (10^4 iterations x 512 x 128) with the
   ``scds-paper`` preset: the tables of ``benchmarks.run`` (raw one-step draws,
   Sinkhorn excess over the exact draws' floor, ESS, k-hat).

It takes about 8 minutes on one GPU, most of it the quality run (``--no-quality``
skips it).  ``--smoke`` runs every part at toy sizes, on any device (about two
minutes on 2 CPU cores, nearly all of it compilation): the test suite runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import jax

from .methods import BUDGETS
from .report import docstring_parser, machine_info
from .run import run_suite, with_settings
from .targets import make_target
from .throughput import draw_cost, matmul_rate, training_cost, untrained_sampler

#: Sizes of the full check and of ``--smoke``.
SIZES = {
    "full": dict(
        batch_sizes=(512, 2048),
        num_sde_steps=128,
        methods=("dds", "cdds", "scds"),
        num_draws=100_000,
        chunk_size=20,
        peak_size=2048,
    ),
    "smoke": dict(
        batch_sizes=(8, 16),
        num_sde_steps=4,
        methods=("cdds",),
        num_draws=1000,
        chunk_size=2,
        peak_size=64,
    ),
}


def _target_logdensity(name: str):
    from numpyro_cds.target import target_from_model

    target = make_target(name)
    flat = target_from_model(jax.random.key(0), target.model, target.model_args, {})
    return target, flat.logdensity_fn, flat.dim


def throughput(sizes: dict) -> dict:
    """Training iterations per second and one-step draws per second on the GMM grid."""
    _, logdensity_fn, dim = _target_logdensity("gmm_grid")
    training = [
        training_cost(
            method,
            logdensity_fn,
            dim,
            batch_size=batch_size,
            num_sde_steps=sizes["num_sde_steps"],
            chunk_size=sizes["chunk_size"],
        )
        for method in sizes["methods"]
        for batch_size in sizes["batch_sizes"]
    ]
    sampler = untrained_sampler(
        "cdds", logdensity_fn, dim, num_sde_steps=sizes["num_sde_steps"]
    )
    drawing = [
        draw_cost(sampler, logdensity_fn, sizes["num_draws"], weights=weights)
        for weights in (False, True)
    ]
    width, size = sampler.config.width, sizes["peak_size"]
    matmul = {
        "layer_shape": matmul_rate(sizes["num_draws"], width, width),
        "square": matmul_rate(size, size, size),
        "square_size": size,
    }
    return {"training": training, "drawing": drawing, "matmul_flops_per_second": matmul}


def quality(smoke: bool, out: str) -> dict:
    """The ``scds-paper`` preset on the GMM grid at the paper budget (toy if smoke)."""
    target = make_target("gmm_grid")
    if smoke:
        budget = with_settings(
            dataclasses.replace(BUDGETS["quick"], step_counts=(1, 4)),
            dict(num_train_steps=4, batch_size=16, num_sde_steps=4),
            [target],
        )
    else:
        budget = BUDGETS["paper"]
    command = "python -m benchmarks.gpu" + (" --smoke" if smoke else "")
    return run_suite(
        "paper", budget, [target], ["scds-paper"], out, command=command, plots=False
    )


def render(results: dict) -> str:
    """Markdown tables of a :func:`main` run."""
    lines = [
        f"Device: {results['machine']['device']} ({results['machine']['backend']}), "
        f"JAX {results['machine']['jax']}, {results['machine']['date']}; "
        f"{results['seconds']:.0f} s in all.",
        "",
        "| training | batch | N | iterations/s | first chunk (compiles) s "
        "| step memory MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["throughput"]["training"]:
        lines.append(
            f"| {row['method']} | {row['batch_size']} | {row['num_sde_steps']} "
            f"| {row['iterations_per_second']:.1f} | {row['first_chunk_seconds']:.1f} "
            f"| {row.get('step_memory_bytes', float('nan')) / 1e6:.1f} |"
        )
    lines += [
        "",
        "| one-step draws | weights | draws/s | FLOP per draw | GFLOP/s |",
        "|---|---|---|---|---|",
    ]
    for row in results["throughput"]["drawing"]:
        lines.append(
            f"| {row['num_draws']} | {'exact' if row['weights'] else 'none'} "
            f"| {row['draws_per_second']:.3g} | {row['flops_per_draw']:.3g} "
            f"| {row['flops_per_second'] / 1e9:.3g} |"
        )
    matmul = results["throughput"]["matmul_flops_per_second"]
    size = matmul["square_size"]
    lines += [
        "",
        f"Matmul rate of this device: {matmul['layer_shape'] / 1e9:.3g} GFLOP/s at the "
        f"network's layer shape, {matmul['square'] / 1e9:.3g} GFLOP/s at {size}^3.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    """Command-line entry point."""
    parser = docstring_parser(__doc__)
    parser.add_argument("--out", default=os.path.join("results", "gpu"))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="toy sizes (any device, about 2 minutes on 2 CPU cores)",
    )
    parser.add_argument(
        "--no-quality", action="store_true", help="skip the GMM-grid quality run"
    )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    results = {
        "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "throughput": throughput(SIZES["smoke" if args.smoke else "full"]),
    }
    results["seconds"] = time.perf_counter() - start
    text = render(results)
    if not args.no_quality:
        quality_results = quality(args.smoke, os.path.join(args.out, "quality"))
        results["quality_seconds"] = quality_results["seconds"]
        results["seconds"] = time.perf_counter() - start
        with open(os.path.join(args.out, "quality", "results.md")) as f:
            text = render(results) + "\n" + f.read()
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "gpu.md"), "w") as f:
        f.write(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
