"""Core benchmark: the figures of the core issue, measured side by side with NUTS.

Usage (from the repository root)::

    python -m benchmarks.core --posteriordb ../shared/data/posteriordb \
        --gmm-means ../shared/data/beyond_elbos/gmm40_means.json --write-benchmarks

Writes ``results/core/core.json`` (raw figures) and ``results/core/core.md``; with
``--write-benchmarks`` it regenerates ``BENCHMARKS.md`` from them and the suite
results (see :mod:`benchmarks.report`).  Every CDS run uses
``CDSInference`` defaults unless the row says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import eight_schools  # noqa: E402
import funnel  # noqa: E402
import gmm40  # noqa: E402

from numpyro_cds import CDSInference, ConsistencyConfig, TrainConfig  # noqa: E402
from numpyro_cds.consistency import consistency_sampler  # noqa: E402
from numpyro_cds.diagnostics import (  # noqa: E402
    flatten_samples,
    mode_statistics,
    standardized_errors,
)
from numpyro_cds.target import target_from_model  # noqa: E402
from numpyro_cds.train import default_optimizer, fit  # noqa: E402
from numpyro_cds.whitening import AffineWhitening  # noqa: E402

from .methods import run_nuts  # noqa: E402
from .report import machine_info, write_benchmarks  # noqa: E402

NUM_DRAWS = 20_000


def _median_time(fn, repeats=5):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _nuts(model, seed, *args):
    """NUTS 2 x (1000 warm-up + 1000 draws); costs as in the suite runner."""
    mcmc, info = run_nuts(
        model,
        args,
        jax.random.key(seed),
        dict(num_warmup=1000, num_samples=1000, num_chains=2),
    )
    info["seconds"] = info.pop("warmup_seconds") + info.pop("sample_seconds")
    return mcmc, info


def _max_errors(samples, reference):
    errors = standardized_errors(flatten_samples(samples), reference)
    return {
        "max_mean_error": max(abs(e[0]) for e in errors.values()),
        "max_log_sd_ratio": max(abs(e[1]) for e in errors.values()),
    }


def bench_eight_schools(posteriordb, seed):
    """Default CDSInference on non-centered eight schools against posteriordb."""
    cds = CDSInference(eight_schools.model, num_samples=NUM_DRAWS, progress_bar=False)
    start = time.perf_counter()
    cds.run(jax.random.key(seed), eight_schools.SIGMA, eight_schools.Y)
    result = {"seconds_total": time.perf_counter() - start, "timings": cds.timings}
    reference = eight_schools.reference_draws(posteriordb) if posteriordb else None
    n = cds.consistency.num_sde_steps
    for k in (1, 2, 4, 16, n):
        samples = cds.sample(jax.random.key(seed + 1), NUM_DRAWS, num_steps=k)
        if reference is not None:
            result[f"k={k}"] = _max_errors(samples, reference)
    mcmc, result["nuts"] = _nuts(
        eight_schools.model, seed, eight_schools.SIGMA, eight_schools.Y
    )
    if reference is not None:
        result["nuts"].update(_max_errors(mcmc.get_samples(), reference))
    return result


def bench_gmm40(means_path, seed):
    """GMM-40 with whitening (0, 40) and with the default automatic whitening."""
    means = gmm40.make_means(means_path)
    result = {}
    for label, whitening in (("scale40", (0.0, 40.0)), ("auto", "auto")):
        cds = CDSInference(
            gmm40.model, num_samples=NUM_DRAWS, whitening=whitening, progress_bar=False
        )
        start = time.perf_counter()
        cds.run(jax.random.key(seed), means)
        row = {"seconds_total": time.perf_counter() - start}
        for k in (1, 4, cds.consistency.num_sde_steps):
            x = cds.sample(jax.random.key(seed + 1), NUM_DRAWS, num_steps=k)["x"]
            row[f"k={k}"] = mode_statistics(np.asarray(x), np.asarray(means))
        result[label] = row
    mcmc, result["nuts"] = _nuts(gmm40.model, seed, means)
    result["nuts"].update(
        mode_statistics(np.asarray(mcmc.get_samples()["x"]), np.asarray(means))
    )
    return result


def bench_funnel(seed):
    """Funnel 10-D: x0 quantiles at k = 1 and k = N beside NUTS; sampling throughput."""
    cds = CDSInference(funnel.model, num_samples=NUM_DRAWS, progress_bar=False)
    start = time.perf_counter()
    cds.run(jax.random.key(seed), 10)
    result = {"seconds_total": time.perf_counter() - start}
    for k in (1, 4, cds.consistency.num_sde_steps):
        x = cds.sample(jax.random.key(seed + 1), 100_000, num_steps=k)["x"]
        result[f"k={k}"] = funnel.x0_quantiles(x).tolist()
    mcmc, result["nuts"] = _nuts(funnel.model, seed, 10)
    result["nuts"]["quantiles"] = funnel.x0_quantiles(mcmc.get_samples()["x"]).tolist()
    # Throughput of trained one-step sampling at dimension 10.
    n = 1_000_000
    trained, logdensity_fn = cds.trained, cds.target.logdensity_fn
    seconds = _median_time(
        lambda: trained.sample(jax.random.key(3), logdensity_fn, n, 1, weights=False)
    )
    result["draws_per_second_1step_d10"] = n / seconds
    seconds = _median_time(lambda: cds.sample(jax.random.key(4), n, num_steps=1), 3)
    result["draws_per_second_via_sample"] = n / seconds
    return result


def _logistic_regression_50d():
    """A 50-D Bayesian logistic regression on 500 synthetic observations."""
    import numpyro
    import numpyro.distributions as dist

    keys = jax.random.split(jax.random.key(0), 3)
    features = jax.random.normal(keys[0], (500, 50))
    weights = 0.3 * jax.random.normal(keys[1], (50,))
    labels = jax.random.bernoulli(keys[2], jax.nn.sigmoid(features @ weights))

    def model(features, labels):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(50), 1.0))
        numpyro.sample("labels", dist.Bernoulli(logits=features @ w), obs=labels)

    return model, (features, labels.astype(jnp.float32))


def bench_training_speed(means_path, seed):
    """Seconds per training iteration at several configurations and targets.

    One ``fit`` call of 7 chunks of 50 iterations each; the time between consecutive
    chunk callbacks is one chunk's run time (the first chunk, which compiles, is
    dropped).
    """
    means = gmm40.make_means(means_path)
    gmm_target = target_from_model(jax.random.key(seed), gmm40.model, (means,))
    gmm_logdensity = AffineWhitening(
        jnp.zeros(2), jnp.full(2, 40.0)
    ).whitened_logdensity(gmm_target.logdensity_fn)
    model, args = _logistic_regression_50d()
    logistic = target_from_model(jax.random.key(seed), model, args)
    cases = [
        ("GMM-40 (2-D)", gmm_logdensity, 2, 256, 64),
        ("GMM-40 (2-D)", gmm_logdensity, 2, 512, 128),
        ("logistic regression (50-D, 500 obs)", logistic.logdensity_fn, 50, 256, 64),
    ]
    result = {}
    for name, logdensity_fn, dim, batch, steps in cases:
        config = ConsistencyConfig(batch_size=batch, num_sde_steps=steps)
        train = TrainConfig(num_train_steps=350, chunk_size=50)
        algorithm = consistency_sampler(
            logdensity_fn, dim, config, default_optimizer(train)
        )
        state, static = algorithm.init(jax.random.key(seed))
        stamps = []
        fit(
            jax.random.key(seed),
            algorithm.step,
            state,
            static,
            350,
            chunk_size=50,
            progress_bar=False,
            on_chunk=lambda s, i, stamps=stamps: stamps.append(time.perf_counter()),
        )
        per_iteration = np.diff(stamps) / 50
        result[f"{name}, B={batch}, N={steps}"] = float(np.median(per_iteration))
    return result


def _fmt(value, digits=3):
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _section(title, section, header):
    """Heading, command line and table header of one BENCHMARKS.md section."""
    columns = header.count("|") - header.count("\\|") - 1
    rule = "|" + "---|" * columns
    return [title, "", f"Command: `{section['command']}`", "", header, rule]


def render_markdown(results):
    """The BENCHMARKS.md section of the core figures."""
    m = results["machine"]
    lines = [
        "## Core (issue: NumPyro model in, one-step sampler out)",
        "",
        f"Machine: {m['processor']}, {m['cores']} cores, JAX {m['jax']} on "
        f"{m['backend']}; {m['date']}. One seed ({results['seed']}); "
        f"{NUM_DRAWS} draws per figure unless stated. CPU budget: the CDSInference "
        "defaults (CDDS after a DDS teacher, 4000 iterations each, batch 256, 64 SDE "
        "steps).",
        "",
    ]
    es = results.get("eight_schools")
    if es:
        lines += _section(
            "### Eight schools (non-centered) against posteriordb reference draws",
            es,
            "| method | wall time (s) | max \\|mean err\\| / ref sd | max \\|log sd ratio\\| |",
        )
        for key, row in es.items():
            if key.startswith("k=") and "max_mean_error" in row:
                lines.append(
                    f"| CDS {key} | {_fmt(es['seconds_total'], 1)} (train + "
                    f"1 draw set) | {_fmt(row['max_mean_error'])} | "
                    f"{_fmt(row['max_log_sd_ratio'])} |"
                )
        nuts = es["nuts"]
        lines.append(
            f"| NUTS 2x1000 | {_fmt(nuts['seconds'], 1)} | "
            f"{_fmt(nuts.get('max_mean_error', float('nan')))} | "
            f"{_fmt(nuts.get('max_log_sd_ratio', float('nan')))} |"
        )
        lines += [
            "",
            f"CDS timings (s): {json.dumps({k: round(v, 1) for k, v in es['timings'].items()})}; "
            f"NUTS: {nuts['divergences']} divergences, "
            f"{nuts['gradient_evaluations']} gradient evaluations.",
            "",
        ]
    gmm = results.get("gmm40")
    if gmm:
        lines += _section(
            "### GMM-40 (2-D, 40 modes)",
            gmm,
            "| method | wall time (s) | modes with >= 0.5 % | draws within 3 sd of a mode | max \\|weight - 1/40\\| |",
        )
        for label in ("scale40", "auto"):
            row = gmm[label]
            for key, stats in row.items():
                if key.startswith("k="):
                    lines.append(
                        f"| CDS whitening={label}, {key} | {_fmt(row['seconds_total'], 1)} | "
                        f"{stats['modes_found']}/40 | {_fmt(stats['near_fraction'])} | "
                        f"{_fmt(stats['max_weight_error'], 4)} |"
                    )
        nuts = gmm["nuts"]
        lines += [
            f"| NUTS 2x1000 | {_fmt(nuts['seconds'], 1)} | {nuts['modes_found']}/40 | "
            f"{_fmt(nuts['near_fraction'])} | {_fmt(nuts['max_weight_error'], 4)} |",
            "",
        ]
    fun = results.get("funnel")
    if fun:
        lines += _section(
            "### Funnel (10-D): quantiles of x0 (exact: -6.98, 0, 6.98)",
            fun,
            "| method | wall time (s) | 1 % | 50 % | 99 % |",
        )
        for key, q in fun.items():
            if key.startswith("k="):
                lines.append(
                    f"| CDS {key} (100k draws) | {_fmt(fun['seconds_total'], 1)} | "
                    + " | ".join(_fmt(v, 2) for v in q)
                    + " |"
                )
        nuts = fun["nuts"]
        lines += [
            f"| NUTS 2x1000 ({nuts['divergences']} divergences) | {_fmt(nuts['seconds'], 1)} | "
            + " | ".join(_fmt(v, 2) for v in nuts["quantiles"])
            + " |",
            "",
            "### Sampling throughput after training (1 step, dimension 10)",
            "",
            f"- raw sampler (prior draw, network, unwhitening), 10^6 draws: "
            f"{fun['draws_per_second_1step_d10'] / 1e6:.2f} M draws/s",
            f"- `cds.sample(key, 10**6)` (adds constraining to the model's sites): "
            f"{fun['draws_per_second_via_sample'] / 1e6:.2f} M draws/s",
            "",
        ]
    speed = results.get("training_speed")
    if speed:
        lines += _section(
            "### Training speed (median over 6 compiled chunks of 50 iterations in "
            "one run; GMM-40 with whitening scale 40)",
            speed,
            "| configuration | s / iteration | reference PyTorch DIS (same machine) |",
        )
        for key, value in speed.items():
            if key == "command":
                continue
            ref = "0.34 s (SCDS ~1.3x that)" if "B=512" in key else ""
            lines.append(f"| {key} | {value:.4f} | {ref} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    """Run the core benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriordb", default=None)
    parser.add_argument("--gmm-means", default=None)
    parser.add_argument("--out", default="results/core")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=["eight_schools", "gmm40", "funnel", "training_speed"],
    )
    parser.add_argument(
        "--write-benchmarks",
        action="store_true",
        help="regenerate BENCHMARKS.md from every results file under results/",
    )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "core.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    results.update(seed=args.seed, machine=machine_info())
    runs = {
        "eight_schools": lambda: bench_eight_schools(args.posteriordb, args.seed),
        "gmm40": lambda: bench_gmm40(args.gmm_means, args.seed),
        "funnel": lambda: bench_funnel(args.seed),
        "training_speed": lambda: bench_training_speed(args.gmm_means, args.seed),
    }
    command = "python -m benchmarks.core " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    for name in args.only or runs:
        print(f"running {name} ...", flush=True)
        results[name] = runs[name]()
        results[name]["command"] = command
        json.dump(results, open(path, "w"), indent=1, default=float)
    markdown = render_markdown(results)
    open(os.path.join(args.out, "core.md"), "w").write(markdown)
    print(markdown)
    if args.write_benchmarks:
        write_benchmarks(os.path.dirname(args.out) or ".", "BENCHMARKS.md")


if __name__ == "__main__":
    main()
