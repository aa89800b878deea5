"""Run a benchmark suite: every registered method on every target, same metrics.

Usage (from the repository root)::

    python -m benchmarks.run --suite paper --budget cpu
    python -m benchmarks.run --suite posteriors --budget cpu \
        --posteriordb ../shared/data/posteriordb
    python -m benchmarks.run --suite all --budget gpu --posteriordb PATH

Suites: ``paper`` (GMM grid, MW54, funnel, MW52), ``extended`` (GMM-40 2-D and 50-D,
Many-Well 32-D, breast-cancer logistic regression, LGCP), ``evidence`` (conjugate
Gaussian models with closed-form log Z and posterior), ``posteriors`` (posteriordb;
needs ``--posteriordb``) and ``all``.  Writes ``results.json`` (raw figures),
``results.md`` (tables) and PNG plots to ``--out`` (default
``results/<suite>-<budget>``); ``--write-benchmarks`` then regenerates
``BENCHMARKS.md`` from every results file under ``results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np

from numpyro_cds.diagnostics import flatten_samples
from numpyro_cds.target import target_from_model

from . import metrics
from .methods import BUDGETS, DEFAULT_METHODS, METHODS, Budget, MethodRun
from .report import machine_info, render_results, write_benchmarks
from .targets import SUITES, BenchmarkTarget, make_target

__all__ = ["evaluate", "load_targets", "main", "run_suite"]

PAIRWISE_DRAWS = 2000


def _posterior_targets(root: str) -> list[BenchmarkTarget]:
    from .posteriordb import POSTERIOR_NAMES, load_posterior

    targets = []
    for name in POSTERIOR_NAMES:
        posterior = load_posterior(root, name)
        dim = target_from_model(
            jax.random.key(0), posterior.model, posterior.model_args
        ).dim
        targets.append(
            BenchmarkTarget(
                name=name,
                model=posterior.model,
                model_args=posterior.model_args,
                dim=dim,
                reference=posterior.reference,
                description="posteriordb reference draws",
            )
        )
    targets.append(_stochastic_volatility_target())
    return targets


def _stochastic_volatility_target() -> BenchmarkTarget:
    """The 103-D stochastic-volatility posterior, with its NUTS reference.

    The reference is cached in ``results/sv_reference.npz`` (made in about a minute
    when missing).
    """
    from . import stochastic_volatility as sv

    y = sv.simulate_returns()
    return BenchmarkTarget(
        name="stochastic_volatility-100_days",
        model=sv.stochastic_volatility,
        model_args=(y,),
        dim=target_from_model(jax.random.key(0), sv.stochastic_volatility, (y,)).dim,
        reference=sv.reference_draws(os.path.join("results", "sv_reference.npz")),
        description="long NUTS reference (4 x 2500 draws, R-hat < 1.01), "
        "benchmarks.stochastic_volatility",
    )


def load_targets(
    suite: str, posteriordb: str | None, only=None
) -> list[BenchmarkTarget]:
    """The targets of a suite, optionally restricted to the names in ``only``."""
    names = {
        "paper": SUITES["paper"],
        "extended": SUITES["extended"],
        "evidence": SUITES["evidence"],
        "all": SUITES["paper"] + SUITES["extended"] + SUITES["evidence"],
        "posteriors": (),
    }[suite]
    targets = [make_target(name) for name in names if not only or name in only]
    if suite in ("posteriors", "all"):
        if posteriordb is None:
            raise SystemExit(
                "--suite posteriors needs --posteriordb PATH (the posteriordb folder, "
                "e.g. ../shared/data/posteriordb)."
            )
        targets += [
            t for t in _posterior_targets(posteriordb) if not only or t.name in only
        ]
    return targets


def evaluate(
    target: BenchmarkTarget,
    run: MethodRun,
    exact: np.ndarray | None,
    reference: dict | None,
) -> dict:
    """The metrics of one method run on one target.

    Args:
        target: the target.
        run: the method's draws.
        exact: fresh exact draws of site ``x`` (synthetic targets), or None.
        reference: flat reference draws (posteriordb, or NUTS where nothing better
            exists), or None.

    Returns:
        Dict of metric name to value.  The Sinkhorn cost compares ``n`` draws with
        ``n`` exact draws; the divergence, MMD and mode figures use the first
        ``PAIRWISE_DRAWS`` of each (their cost grows faster with ``n``).
    """
    result = {}
    if exact is not None:
        x = run.samples["x"]
        result["num_draws"] = len(x)
        if target.mode_means is not None:
            result["mode_weight_error"] = metrics.max_mode_weight_error(
                x, target.mode_means
            )
        if target.quantile_dims:
            result["quantile_error"] = metrics.max_quantile_error(
                x, exact[: len(x)], target.quantile_dims
            )
        result["sinkhorn"], result["sinkhorn_converged"] = metrics.sinkhorn_cost(
            x, exact[: len(x)]
        )
        x, exact = x[:PAIRWISE_DRAWS], exact[:PAIRWISE_DRAWS]
        result["sinkhorn_divergence"] = metrics.sinkhorn_divergence(x, exact)
        result["mmd2"] = metrics.mmd(x, exact)
        if target.mode_means is not None:
            result["emc"] = metrics.entropic_mode_coverage(x, target.mode_means)
            result["modes_hit"] = metrics.modes_hit(x, target.mode_means)
    if reference is not None:
        result.update(
            metrics.max_standardized_errors(flatten_samples(run.samples), reference)
        )
    weights = run.info.get("weights")
    if weights is not None and target.log_z is not None:
        result["log_z_error"] = metrics.log_z_error(
            weights["log_evidence"], target.log_z
        )
    return result


def _run_target(target, budget, methods, seed, plots_dir):
    key = jax.random.key(seed)
    exact_key, floor_key, method_key = jax.random.split(key, 3)
    exact = floor = None
    if target.exact_sampler is not None:
        exact = target.exact_sampler(exact_key, budget.num_draws)
        floor = target.exact_sampler(floor_key, budget.num_draws)
    runs = []
    for name in methods:
        print(f"  {target.name}: {name} ...", flush=True)
        runs += METHODS[name](target, budget, jax.random.fold_in(method_key, len(runs)))
        # Each fit compiles new programs that JAX's caches keep alive; a long suite
        # would otherwise run into the per-process limit on memory mappings.
        jax.clear_caches()
    reference = target.reference
    reference_kind = (
        "posteriordb" if "posteriordb" in target.description else "long NUTS"
    )
    if reference is None and exact is None:
        nuts = [run for run in runs if run.method == "NUTS"]
        reference = flatten_samples(nuts[0].samples) if nuts else None
        reference_kind = "NUTS"
    rows = []
    if floor is not None:
        for count in sorted({len(run.samples["x"]) for run in runs}, reverse=True):
            floor_run = MethodRun(
                f"exact draws (n={count})", {"x": floor[:count]}, 0.0, 0.0, None, 0
            )
            rows.append(_row(floor_run, evaluate(target, floor_run, exact, None)))
    for run in runs:
        rows.append(_row(run, evaluate(target, run, exact, reference)))
    if plots_dir is not None:
        from .plots import plot_target

        plot_target(target, runs, exact, reference, plots_dir)
    return {
        "description": target.description,
        "dim": target.dim,
        "log_z": target.log_z,
        "reference": "exact draws" if exact is not None else reference_kind,
        "paper": target.paper,
        "rows": rows,
    }


def _row(run: MethodRun, values: dict) -> dict:
    return {
        "method": run.method,
        "train_seconds": run.train_seconds,
        "sample_seconds": run.sample_seconds,
        "network_evaluations": run.network_evaluations,
        "gradient_evaluations": run.gradient_evaluations,
        "info": run.info,
        "metrics": values,
    }


def run_suite(
    suite: str,
    budget: Budget,
    targets: list[BenchmarkTarget],
    methods: list[str],
    out: str,
    seed: int = 0,
    command: str = "",
    plots: bool = True,
) -> dict:
    """Run the methods on the targets and write ``results.json`` and ``results.md``.

    Results are written after every target, so an interrupted run keeps what it has.

    Returns:
        The results dict (as written to ``results.json``).
    """
    os.makedirs(out, exist_ok=True)
    plots_dir = os.path.join(out, "plots") if plots else None
    results = {
        "suite": suite,
        "budget": budget.name,
        "budget_settings": {
            "synthetic": budget.synthetic,
            "posterior": budget.posterior,
            "nuts": budget.nuts,
            "num_draws": budget.num_draws,
            "overrides": budget.overrides,
        },
        "command": command,
        "machine": machine_info(),
        "seed": seed,
        "targets": {},
    }
    start = time.perf_counter()
    for target in targets:
        print(f"{target.name} ({target.dim}-D)", flush=True)
        results["targets"][target.name] = _run_target(
            target, budget, methods, seed, plots_dir
        )
        results["seconds"] = time.perf_counter() - start
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=float)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(render_results(results))
    if plots_dir is not None:
        from .plots import plot_steps

        plot_steps(results, plots_dir)
    return results


def parse_settings(parser: argparse.ArgumentParser, pairs: list[str]) -> dict:
    """``NAME=VALUE`` pairs as a dict, values as JSON reads them (else strings)."""
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            parser.error(f"--set takes NAME=VALUE pairs, got {pair!r}")
        try:
            settings[name] = json.loads(value)
        except json.JSONDecodeError:
            settings[name] = value
    return settings


def with_settings(budget: Budget, settings: dict, targets) -> Budget:
    """``budget`` with ``settings`` over its per-target settings for ``targets``."""
    overrides = dict(budget.overrides)
    for target in targets:
        overrides[target.name] = {**overrides.get(target.name, {}), **settings}
    return dataclasses.replace(budget, overrides=overrides)


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite",
        choices=["paper", "extended", "evidence", "posteriors", "all"],
        default="paper",
    )
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="quick")
    parser.add_argument("--posteriordb", default=None, help="posteriordb folder")
    parser.add_argument("--targets", nargs="*", default=None, help="subset of targets")
    parser.add_argument(
        "--methods", nargs="*", default=None, help=f"subset of {sorted(METHODS)}"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="training settings for every target, over the budget's (e.g. "
        "num_train_steps=4000 num_sde_steps=128); numbers as numbers",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--write-benchmarks",
        action="store_true",
        help="regenerate BENCHMARKS.md from every results file under results/",
    )
    args = parser.parse_args(argv)
    methods = args.methods or list(DEFAULT_METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; registered: {sorted(METHODS)}")
    out = args.out or os.path.join("results", f"{args.suite}-{args.budget}")
    command = "python -m benchmarks.run " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    targets = load_targets(args.suite, args.posteriordb, args.targets)
    budget = dataclasses.replace(
        BUDGETS[args.budget], checkpoint_dir=os.path.join(out, "checkpoints")
    )
    if args.set:
        budget = with_settings(budget, parse_settings(parser, args.set), targets)
    results = run_suite(
        args.suite,
        budget,
        targets,
        methods,
        out,
        args.seed,
        command,
        plots=not args.no_plots,
    )
    print(render_results(results))
    if args.write_benchmarks:
        write_benchmarks("results", "BENCHMARKS.md")


if __name__ == "__main__":
    main()
