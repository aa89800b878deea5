"""One-step ablation: one factor at a time against the defaults, at a fixed budget.

Usage (from the repository root)::

    python -m benchmarks.one_step_ablation --posteriordb ../shared/data/posteriordb

For each target (eight schools non-centred from posteriordb, the GMM grid, the 10-D
funnel; MW54 on request) and each variant (the ``CDSInference`` defaults, then one setting changed at a
time), trains one sampler at the same budget and draws ``--num-draws`` raw draws
(``correction=None``) with ``k`` probability-flow steps for every ``k`` in ``--steps``.
Each cell gives, for the draws with ``k`` steps: the target's quality figure (eight
schools: worst standardised mean error / worst log-sd ratio against posteriordb's
reference; GMM grid: the paper's Sinkhorn in the reference orientation, as the excess
over two independent exact sets of the same size; funnel: the largest error of the 1 %
and 99 % quantiles of ``x0``), then the training monitor's Renyi-1/2 divergence and
the Jeffreys divergence (its former score) of the draws, the importance ESS, the PSIS
k-hat, ``log Z``
minus the exact value in standard errors, and ``F`` where a flow step folds.  Rows go
to ``OUT/one_step_ablation.json`` and a BENCHMARKS.md section to ``OUT/section.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
import warnings

import jax
import numpy as np

from numpyro_cds import CDSInference, summarize_weights
from numpyro_cds.consistency import ConsistencyConfig
from numpyro_cds.diagnostics import flatten_samples
from numpyro_cds.monitor import MonitorConfig, renyi_half_divergence

from . import metrics
from .posteriordb import load_posterior
from .targets import make_target

#: Quadrature value of eight schools' log Z (method.md Part C, item 5).
EIGHT_SCHOOLS_LOG_Z = -31.3113

#: One change at a time against the defaults (name -> CDSInference keywords).
VARIANTS = {
    "defaults": {},
    "target score in every step": {
        "consistency": ConsistencyConfig(target_score_max_step=None)
    },
    "teacher = current weights": {"consistency": ConsistencyConfig(teacher="current")},
    "drawing bound 6 (training 3.89)": {
        "consistency": ConsistencyConfig(prior_bound=3.89, sampling_prior_bound=6.0)
    },
    "prior box 4.9 (training and drawing; 1e-5 of the mass left out in 10-D)": {
        "consistency": ConsistencyConfig(prior_bound=4.9)
    },
    "no whitening": {"whitening": None},
    "velocity-space consistency": {
        "consistency": ConsistencyConfig(consistency_space="velocity")
    },
    "width 128": {"consistency": ConsistencyConfig(width=128)},
    "state scale": {"consistency": ConsistencyConfig(state_scale=True)},
    "control clip 10 -> 50 -> 250 (reference)": {
        "consistency": ConsistencyConfig(clip_milestones=(200, 400))
    },
}


def _eight_schools(posteriordb):
    posterior = load_posterior(posteriordb, "eight_schools-eight_schools_noncentered")

    def quality(samples, _):
        errors = metrics.max_standardized_errors(
            flatten_samples(samples), posterior.reference
        )
        return f"{errors['max_mean_error']:.3f}, {errors['max_log_sd_ratio']:.3f}"

    return posterior.model, posterior.model_args, EIGHT_SCHOOLS_LOG_Z, quality


def _synthetic(name):
    target = make_target(name)

    def quality(samples, rng_key):
        x = np.asarray(samples["x"])
        exact_key, floor_key = jax.random.split(rng_key)
        exact = np.asarray(target.exact_sampler(exact_key, len(x)))
        if name == "funnel":
            reference = np.quantile(exact[:, 0], [0.01, 0.99])
            return (
                f"{np.max(np.abs(np.quantile(x[:, 0], [0.01, 0.99]) - reference)):.2f}"
            )
        floor = np.asarray(target.exact_sampler(floor_key, len(x)))
        value, _ = metrics.sinkhorn_cost(x, exact)
        excess = value - metrics.sinkhorn_cost(floor, exact)[0]
        if target.mode_means is None:
            return f"+{excess:.3f}"
        modes = metrics.modes_hit(x, target.mode_means)
        return f"+{excess:.3f} ({modes}/{len(target.mode_means)})"

    return target.model, target.model_args, target.log_z, quality


QUALITY = {
    "eight_schools": "max mean err / log sd",
    "gmm_grid": "Sinkhorn excess (modes)",
    "mw54": "Sinkhorn excess",
    "funnel": "x0 1 %/99 % quantile error",
}


def _cell(cds, rng_key, num_steps, num_draws, log_z, quality):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, log_weights = cds.sample(rng_key, num_draws, num_steps, True)
    folded = any("fold space" in str(w.message) for w in caught)
    log_weights = np.asarray(log_weights)
    summary = summarize_weights(log_weights)
    sigmas = (summary.log_evidence - log_z) / max(summary.standard_error, 1e-12)
    return {
        "quality": quality(samples, jax.random.fold_in(rng_key, 7)),
        "renyi_half": renyi_half_divergence(log_weights),
        "jeffreys": metrics.jeffreys_divergence(log_weights),
        "ess": summary.ess,
        "pareto_k": summary.pareto_k,
        "log_z": summary.log_evidence,
        "standard_error": summary.standard_error,
        "log_z_sigmas": sigmas,
        "folded": folded,
    }


def run(args) -> list[dict]:
    """Train every variant on every target; return the rows."""
    targets = {
        "eight_schools": lambda: _eight_schools(args.posteriordb),
        "gmm_grid": lambda: _synthetic("gmm_grid"),
        "funnel": lambda: _synthetic("funnel"),
        "mw54": lambda: _synthetic("mw54"),
    }
    rows = []
    for target_name in args.targets:
        model, model_args, log_z, quality = targets[target_name]()
        for variant in args.variants:
            options = dict(VARIANTS[variant])
            consistency = options.pop("consistency", ConsistencyConfig())
            consistency = dataclasses.replace(
                consistency,
                batch_size=args.batch_size,
                num_sde_steps=args.num_sde_steps,
            )
            cds = CDSInference(
                model,
                num_train_steps=args.iterations,
                consistency=consistency,
                correction=None,
                progress_bar=False,
                monitor=MonitorConfig(keep_best=False),
                **options,
            )
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cds.warmup(jax.random.key(args.seed), *model_args)
            seconds = time.perf_counter() - start
            # The last snapshot (the training's own result), then the monitor's choice.
            for keep_best in (False, True):
                cds.monitor_config = MonitorConfig(keep_best=keep_best)
                cells = {
                    k: _cell(
                        cds,
                        jax.random.key(args.seed + 1),
                        k,
                        args.num_draws,
                        log_z,
                        quality,
                    )
                    for k in args.steps
                }
                row = {
                    "target": target_name,
                    "variant": variant + (" + monitor" if keep_best else ""),
                    "seconds": seconds,
                    "iterations_done": cds.training_iterations,
                    "snapshot_iteration": cds.snapshot.iteration,
                    "cells": cells,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def render(rows, args, command) -> str:
    """The BENCHMARKS.md section."""
    lines = [
        "## One-step ablation (issue 9)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, JAX "
        f"{jax.__version__} on {jax.default_backend()}; seed {args.seed}.  Budget: "
        f"{args.iterations} iterations x batch {args.batch_size} x N = "
        f"{args.num_sde_steps} for every variant; {args.num_draws} raw draws "
        "(`correction=None`) per cell.  Each variant changes one setting of the "
        "`CDSInference` defaults and is drawn with its last snapshot, then (`+ "
        "monitor`) with the training monitor's choice, from the same training.  A "
        "cell is: quality / D (the monitor's Renyi-1/2 divergence) / J (the Jeffreys "
        "divergence, the monitor's former score) / ESS / k-hat / (log Z - exact) in "
        "standard errors, with F where a flow step folds; D, J, ESS and k-hat from "
        "the cell's draws.",
        "",
    ]
    for target_name in dict.fromkeys(r["target"] for r in rows):
        lines += [f"### {target_name}: {QUALITY[target_name]}", ""]
        header = ["variant", "train s", "snapshot"] + [f"k = {k}" for k in args.steps]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in (r for r in rows if r["target"] == target_name):
            cells = []
            for k in args.steps:
                c = row["cells"][k]
                cells.append(
                    f"{c['quality']} / {c['renyi_half']:.3f} / {c['jeffreys']:.3g} / "
                    f"{c['ess']:.3f} / {c['pareto_k']:.2f} / "
                    f"{c['log_z_sigmas']:+.1f}" + (" F" if c["folded"] else "")
                )
            lines.append(
                f"| {row['variant']} | {row['seconds']:.0f} | "
                f"{row['snapshot_iteration']}/{row['iterations_done']} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriordb", default="../shared/data/posteriordb")
    parser.add_argument(
        "--targets", nargs="*", default=["eight_schools", "gmm_grid", "funnel"]
    )
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-sde-steps", type=int, default=64)
    parser.add_argument("--num-draws", type=int, default=4000)
    parser.add_argument("--steps", type=int, nargs="*", default=[1, 2, 4, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/one_step_ablation")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    command = "python -m benchmarks.one_step_ablation " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    rows = run(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "one_step_ablation.json"), "w") as f:
        json.dump({"command": command, "rows": rows}, f, indent=1)
    section = render(rows, args, command)
    with open(os.path.join(args.out, "section.md"), "w") as f:
        f.write(section)
    print(section)


if __name__ == "__main__":
    main()
