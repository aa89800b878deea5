"""SCDS with and without the volume-consistency term: weights, Sinkhorn, cost.

Usage (from the repository root)::

    python -m benchmarks.volume_consistency --iterations 2000 --seeds 0 1

For each target, seed and ``volume_weight``, trains SCDS with the library's pieces
(identity whitening, :func:`~numpyro_cds.train.default_optimizer`, the other
:class:`~numpyro_cds.consistency.ConsistencyConfig` defaults), then draws with ``k``
probability-flow steps and exact log-determinants and reports the normalised
importance ESS, the Pareto k-hat, ``|log Z estimate - log Z|``, the paper's Sinkhorn
cost against as many exact draws, and the seconds per training iteration (compiled
chunks of each weight timed in alternation, so that both see the same machine load).
Rows go to ``OUT/volume_consistency.json`` and a table to ``OUT/section.md`` (a
BENCHMARKS.md section) and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

from numpyro_cds.consistency import ConsistencyConfig, consistency_sampler
from numpyro_cds.importance import summarize_weights
from numpyro_cds.target import target_from_model
from numpyro_cds.train import TrainConfig, default_optimizer, fit

from . import metrics
from .targets import make_target


def _train(target, weight, args, seed):
    """Train one sampler; returns the sampler pieces, losses and iteration times."""
    target_key, init_key, train_key = jax.random.split(jax.random.key(seed), 3)
    flat = target_from_model(target_key, target.model, target.model_args, {})
    config = ConsistencyConfig(
        batch_size=args.batch_size,
        num_sde_steps=args.num_sde_steps,
        volume_weight=weight,
    )
    optimizer = default_optimizer(TrainConfig(num_train_steps=args.iterations))
    algorithm = consistency_sampler(flat.logdensity_fn, flat.dim, config, optimizer)
    state, static = algorithm.init(init_key)
    chunk_ends = [time.perf_counter()]
    state, info = fit(
        train_key,
        algorithm.step,
        state,
        static,
        args.iterations,
        chunk_size=args.chunk_size,
        progress_bar=False,
        on_chunk=lambda *_: chunk_ends.append(time.perf_counter()),
    )
    chunk_seconds = np.diff(chunk_ends)
    return flat, algorithm, state, static, info, chunk_seconds


def _paired_seconds_per_iteration(target, weights, args, rounds=5):
    """Seconds per iteration of each weight, timed in alternation (same load).

    The training runs above share the machine with whatever else runs, so their
    times drift; here each weight's compiled chunk of iterations runs in turn,
    ``rounds`` times, and the median is kept.
    """
    flat = target_from_model(jax.random.key(0), target.model, target.model_args, {})
    optimizer = default_optimizer(TrainConfig(num_train_steps=args.iterations))
    chunks = []
    for weight in weights:
        config = ConsistencyConfig(
            batch_size=args.batch_size,
            num_sde_steps=args.num_sde_steps,
            volume_weight=weight,
        )
        algorithm = consistency_sampler(flat.logdensity_fn, flat.dim, config, optimizer)
        state, static = algorithm.init(jax.random.key(1))

        @jax.jit
        def chunk(key, state, algorithm=algorithm, static=static):
            keys = jax.random.split(key, args.chunk_size)
            return jax.lax.scan(lambda s, k: algorithm.step(k, s, static), state, keys)[
                0
            ]

        state = jax.block_until_ready(chunk(jax.random.key(2), state))
        chunks.append((chunk, state))
    seconds = [[] for _ in weights]
    for round_ in range(rounds):
        for i, (chunk, state) in enumerate(chunks):
            start = time.perf_counter()
            jax.block_until_ready(chunk(jax.random.key(3 + round_), state))
            seconds[i].append((time.perf_counter() - start) / args.chunk_size)
    return {
        weight: float(np.median(s)) for weight, s in zip(weights, seconds, strict=True)
    }


def _evaluate(target, flat, algorithm, state, static, num_steps, args, seed):
    draw_key, exact_key = jax.random.split(jax.random.key(1000 + seed))
    draws = jax.jit(
        lambda key: algorithm.sample(
            key, state.ema_params, static, args.num_draws, num_steps, "exact"
        )
    )(draw_key)
    log_weights = jax.vmap(flat.logdensity_fn)(draws.x) - draws.log_density
    summary = summarize_weights(np.asarray(log_weights))
    x = np.asarray(draws.x)
    exact = np.asarray(target.exact_sampler(exact_key, args.num_draws))
    sinkhorn, _ = metrics.sinkhorn_cost(x, exact)
    return {
        "ess": summary.ess,
        "pareto_k": summary.pareto_k,
        "log_z_error": metrics.log_z_error(summary.log_evidence, target.log_z),
        "elbo": summary.elbo,
        "sinkhorn": sinkhorn,
    }


def _row(target, weight, seed, args):
    flat, algorithm, state, static, info, chunk_seconds = _train(
        target, weight, args, seed
    )
    tail = slice(-max(1, len(info.diffusion_loss) // 10), None)
    row = {
        "target": target.name,
        "dim": flat.dim,
        "volume_weight": weight,
        "seed": seed,
        "train_seconds": float(np.sum(chunk_seconds)),
        "seconds_per_iteration": float(np.median(chunk_seconds[1:])) / args.chunk_size,
        "final_diffusion_loss": float(np.nanmedian(info.diffusion_loss[tail])),
        "final_consistency_loss": float(np.nanmedian(info.consistency_loss[tail])),
        "final_volume_loss": float(np.nanmedian(info.volume_loss[tail]))
        if weight > 0
        else None,
    }
    for k in args.steps:
        row[f"k={k}"] = _evaluate(target, flat, algorithm, state, static, k, args, seed)
    return row


def _markdown(rows, timings, args, command):
    lines = [
        "## SCDS with and without the volume-consistency term",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.default_backend()}, JAX {jax.__version__}.  Budget: "
        f"{args.iterations} iterations, batch {args.batch_size}, "
        f"N = {args.num_sde_steps}; {args.num_draws} draws per evaluation.  Per seed, "
        "then the mean over seeds; seconds per iteration timed in alternation "
        "(median of 5 chunks each).",
        "",
        "| target | volume weight | seed | k | ESS | k-hat | abs dlogZ | Sinkhorn "
        "| final volume loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value):
        return "-" if value is None else f"{value:.4g}"

    groups = {}
    for row in rows:
        for k in args.steps:
            m = row[f"k={k}"]
            values = [m["ess"], m["pareto_k"], m["log_z_error"], m["sinkhorn"]]
            lines.append(
                f"| {row['target']} | {row['volume_weight']} | {row['seed']} | {k} | "
                + " | ".join(fmt(v) for v in values + [row["final_volume_loss"]])
                + " |"
            )
            key = (row["target"], row["volume_weight"], k)
            groups.setdefault(key, []).append(values)
    lines += [
        "",
        "| target | volume weight | k | mean ESS | mean k-hat | mean abs dlogZ "
        "| mean Sinkhorn | s / iteration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, weight, k), values in groups.items():
        mean = np.mean(np.asarray(values, dtype=float), axis=0).tolist()
        lines.append(
            f"| {name} | {weight} | {k} | "
            + " | ".join(fmt(v) for v in mean + [timings[name][weight]])
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Train, evaluate and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=["gmm_grid", "funnel"])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--volume-weights", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-sde-steps", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--num-draws", type=int, default=4000)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", default="results/volume-consistency")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.volume_consistency " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    os.makedirs(args.out, exist_ok=True)
    rows, timings = [], {}

    def save():
        with open(os.path.join(args.out, "volume_consistency.json"), "w") as f:
            json.dump({"command": command, "rows": rows, "timings": timings}, f)

    for name in args.targets:
        target = make_target(name)
        for seed in args.seeds:
            for weight in args.volume_weights:
                rows.append(_row(target, weight, seed, args))
                print(json.dumps(rows[-1]), flush=True)
                save()
        timings[name] = _paired_seconds_per_iteration(target, args.volume_weights, args)
        print(json.dumps({name: timings[name]}), flush=True)
        save()
    table = _markdown(rows, timings, args, command)
    with open(os.path.join(args.out, "section.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
