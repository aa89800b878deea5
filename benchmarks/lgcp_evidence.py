"""LGCP evidence check: the 1-step ELBO against log Z estimates (issue 4).

Usage (from the repository root)::

    python -m benchmarks.lgcp_evidence --out results/lgcp-cpu

Trains ``CDSInference`` on the 1600-D log-Gaussian Cox process of
:mod:`benchmarks.targets` (synthetic counts) at a CPU budget, then draws with 1, 2, 4,
... steps, each with its own key, and gives each draw its importance weight (unbiased
stochastic log-determinants, since the dimension is above ``EXACT_LOG_DET_MAX_DIM``).
The ELBO of the 1-step draws must not exceed the log Z estimates: an ELBO above log Z,
as the CDDS paper's boundary-only "ELBO" of 1118 against log Z = 512.6 on the pines
LGCP, is a bug.  Writes ``lgcp.json`` and ``section.md`` (a BENCHMARKS.md section).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import jax
import numpy as np

from numpyro_cds import CDSInference, UnreliableDrawsWarning, summarize_weights

from .report import machine_info
from .targets import make_target


def _estimate(cds, rng_key, num_draws, num_steps) -> dict:
    start = time.perf_counter()
    _, log_weights = cds.sample(rng_key, num_draws, num_steps, log_weights=True)
    log_weights = np.asarray(log_weights, np.float64)
    summary = summarize_weights(log_weights)
    return {
        "num_steps": num_steps,
        "seconds": time.perf_counter() - start,
        "elbo_standard_error": float(np.std(log_weights) / np.sqrt(len(log_weights))),
        **{k: float(v) for k, v in summary._asdict().items()},
    }


def run(args) -> dict:
    """Train, estimate at every step count, and compare the 1-step ELBO with log Z."""
    target = make_target("lgcp")
    os.makedirs(args.out, exist_ok=True)
    cds = CDSInference(
        target.model,
        num_train_steps=args.iterations,
        batch_size=args.batch_size,
        num_sde_steps=args.num_sde_steps,
        progress_bar=False,
        checkpoint=os.path.join(args.out, "lgcp.ckpt"),
    )
    train_key, draw_key = jax.random.split(jax.random.key(args.seed))
    cds.warmup(train_key, *target.model_args)
    # From the sampler's own clock, which the checkpoint carries across processes.
    train_seconds = cds.timings["whitening"] + cds.timings["training"]
    rows = [
        _estimate(cds, jax.random.fold_in(draw_key, k), args.num_draws, k)
        for k in args.steps
    ]
    elbo = rows[0]["elbo"]
    best = max(rows, key=lambda row: row["elbo"])
    return {
        "command": "python -m benchmarks.lgcp_evidence " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "dim": target.dim,
        "log_det_method": cds.log_det_method,
        "settings": vars(args),
        "train_seconds": train_seconds,
        "rows": rows,
        "one_step_elbo": elbo,
        "elbo_below_every_log_z": all(elbo <= row["log_evidence"] for row in rows),
        "best_lower_bound": {k: best[k] for k in ("num_steps", "elbo")},
        # How many standard errors the 1-step ELBO lies below the best lower bound.
        "margin_in_se": (best["elbo"] - elbo)
        / float(np.hypot(best["elbo_standard_error"], rows[0]["elbo_standard_error"])),
    }


def render(results: dict) -> str:
    """The BENCHMARKS.md section."""
    settings, machine = results["settings"], results["machine"]
    lines = [
        "## LGCP evidence: 1-step ELBO against log Z (issue 4)",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {machine['processor']}, {machine['cores']} cores, JAX "
        f"{machine['jax']} ({machine['backend']}), {machine['date']}. Training: "
        f"{settings['iterations']} iterations x batch {settings['batch_size']}, "
        f"N = {settings['num_sde_steps']} ({results['train_seconds']:.0f} s); "
        f"{settings['num_draws']} draws per row, {results['log_det_method']} "
        f"log-determinants ({results['dim']}-D).",
        "",
        "| steps | ELBO +- se | log Z +- se | ESS | k-hat | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['num_steps']} | {row['elbo']:.2f} +- "
            f"{row['elbo_standard_error']:.2f} | {row['log_evidence']:.2f} +- "
            f"{row['standard_error']:.2f} | {row['ess']:.3g} | {row['pareto_k']:.2f} | "
            f"{row['seconds']:.1f} |"
        )
    verdict = "holds" if results["elbo_below_every_log_z"] else "FAILS"
    best = results["best_lower_bound"]
    lines += [
        "",
        f"The 1-step ELBO ({results['one_step_elbo']:.2f}) lies below every row's log Z "
        f"estimate: {verdict}. Each row uses its own draws. Every row's ELBO is a valid "
        "lower bound on the true log Z (the stochastic log-determinants are unbiased, "
        "so E[log w] <= log Z), and the 1-step ELBO lies "
        f"{results['margin_in_se']:.1f} standard errors below the best of them "
        f"({best['num_steps']} steps, {best['elbo']:.2f}), hence below log Z. The log Z "
        "estimates themselves are not reliable here (k-hat far above 0.7: one draw "
        "holds nearly all the weight, and exponentiating noisy log-determinants biases "
        "them upwards). The counts are synthetic (drawn from the model), so the pines "
        "figure log Z = 512.6 does not apply.",
    ]
    return "\n".join(lines)


def main(argv=None):
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-sde-steps", type=int, default=32)
    parser.add_argument("--num-draws", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/lgcp-cpu")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UnreliableDrawsWarning)
    results = run(args)
    with open(os.path.join(args.out, "lgcp.json"), "w") as f:
        json.dump(results, f, indent=2)
    section = render(results)
    with open(os.path.join(args.out, "section.md"), "w") as f:
        f.write(section + "\n")
    print(section)


if __name__ == "__main__":
    main()
