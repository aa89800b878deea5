"""Cost of one training iteration and of one-step draws, measured on the current device.

:func:`training_cost` times compiled chunks of a method's training step (the first
chunk, which compiles, apart) and reads the step's memory from XLA's analysis of the
compiled program (the same on every backend).  :func:`draw_cost` times one-step draws of a network.  Both start from
untrained networks: the cost does not depend on the weights.  Used by
``benchmarks.gpu`` and ``benchmarks.scaling``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from numpyro_cds.consistency import ConsistencyConfig
from numpyro_cds.monitor import MonitorConfig
from numpyro_cds.session import Settings, sampler_algorithm
from numpyro_cds.train import default_optimizer, fit
from numpyro_cds.trained import TrainedSampler
from numpyro_cds.whitening import AffineWhitening

__all__ = ["draw_cost", "training_cost", "untrained_sampler"]


def _settings(
    method: str, batch_size: int, num_sde_steps: int, chunk: int, total, save_memory
):
    return Settings.from_keywords(
        consistency=ConsistencyConfig(save_memory=save_memory),
        train=None,
        monitor=MonitorConfig(),
        whitening=None,
        sampling=None,
        num_steps=None,
        method=method,
        batch_size=batch_size,
        num_sde_steps=num_sde_steps,
        num_train_steps=total,
        chunk_size=chunk,
    )


def _algorithm(settings: Settings, logdensity_fn: Callable, dim: int):
    """The training algorithm of ``settings`` (CDDS: with an untrained DDS teacher)."""
    teacher = None
    if settings.method == "cdds":
        consistency = settings.consistency
        teacher = untrained_sampler(
            "dds",
            logdensity_fn,
            dim,
            batch_size=consistency.batch_size,
            num_sde_steps=consistency.num_sde_steps,
        )
    optimizer = default_optimizer(settings.train, settings.updates_per_step)
    return sampler_algorithm(settings, logdensity_fn, dim, optimizer, teacher)


def untrained_sampler(
    method: str, logdensity_fn: Callable, dim: int, *, batch_size=256, num_sde_steps=64
) -> TrainedSampler:
    """A ``TrainedSampler`` of ``method`` with its initial (untrained) network."""
    settings = _settings(method, batch_size, num_sde_steps, 1, 1, False)
    algorithm = _algorithm(settings, logdensity_fn, dim)
    state, static = algorithm.init(jax.random.key(0))
    return TrainedSampler(
        eqx.combine(state.params, static),
        AffineWhitening(jnp.zeros(dim), jnp.ones(dim)),
        settings.consistency,
        settings.sampling,
        jnp.zeros((), jnp.int32),
        method=method,
    )


def _memory_bytes(algorithm, state, static) -> dict:
    """Bytes XLA plans for one compiled step: arguments, outputs and temporaries."""
    compiled = (
        jax.jit(lambda key, s: algorithm.step(key, s, static))
        .lower(jax.random.key(0), state)
        .compile()
    )
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    parts = ("argument", "output", "temp", "alias")
    sizes = {p: int(getattr(analysis, f"{p}_size_in_bytes", 0)) for p in parts}
    return {
        "step_memory_bytes": sizes["argument"]
        + sizes["output"]
        + sizes["temp"]
        - sizes["alias"],
        "step_temp_bytes": sizes["temp"],
    }


def training_cost(
    method: str,
    logdensity_fn: Callable,
    dim: int,
    *,
    batch_size: int,
    num_sde_steps: int,
    chunk_size: int = 5,
    num_chunks: int = 4,
    save_memory: bool = False,
) -> dict:
    """Seconds per training iteration of ``method`` (median over compiled chunks).

    Args:
        method: ``"scds"``, ``"dis"``, ``"dds"``, ``"pis"`` or ``"cdds"`` (the student,
            distilling an untrained DDS teacher of the same size).
        logdensity_fn: the target's log density of one flat vector.
        dim: its dimension.
        batch_size: paths per iteration.
        num_sde_steps: steps per path.
        chunk_size: iterations per timed chunk.
        num_chunks: chunks run; the first (it compiles) is reported apart.
        save_memory: :attr:`~numpyro_cds.consistency.ConsistencyConfig.save_memory`.

    Returns:
        ``seconds_per_iteration``, ``iterations_per_second``, ``first_chunk_seconds``
        (with compilation), and the memory XLA plans for one step
        (``step_memory_bytes``: arguments, outputs and temporaries).
    """
    total = chunk_size * num_chunks
    settings = _settings(
        method, batch_size, num_sde_steps, chunk_size, total, save_memory
    )
    algorithm = _algorithm(settings, logdensity_fn, dim)
    state, static = algorithm.init(jax.random.key(0))
    stamps = [time.perf_counter()]

    def stamp(chunk_state, _):
        jax.block_until_ready(chunk_state)
        stamps.append(time.perf_counter())

    fit(
        jax.random.key(1),
        algorithm.step,
        state,
        static,
        total,
        chunk_size=chunk_size,
        progress_bar=False,
        on_chunk=stamp,
        loss_name=algorithm.loss_name,
    )
    chunk_seconds = np.diff(stamps)
    per_iteration = float(np.median(chunk_seconds[1:])) / chunk_size
    result = {
        "method": method + (" save_memory" if save_memory else ""),
        "dim": dim,
        "batch_size": batch_size,
        "num_sde_steps": num_sde_steps,
        "seconds_per_iteration": per_iteration,
        "iterations_per_second": 1.0 / per_iteration,
        "first_chunk_seconds": float(chunk_seconds[0]),
        **_memory_bytes(algorithm, state, static),
    }
    return result


def draw_cost(
    sampler: TrainedSampler,
    logdensity_fn: Callable,
    num_draws: int,
    *,
    num_steps: int = 1,
    weights: bool = False,
    repeats: int = 3,
) -> dict:
    """Draws per second of ``sampler`` (median of ``repeats`` after a compiling call).

    Also the floating-point operations XLA counts for the compiled draw, and the rate
    they run at (``flops_per_second``).
    """

    def draw(key):
        return sampler.sample(key, logdensity_fn, num_draws, num_steps, weights)

    jax.block_until_ready(draw(jax.random.key(0)))
    seconds = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(draw(jax.random.key(i + 1)))
        seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    lowered = jax.jit(lambda key: draw(key)).lower(jax.random.key(0))
    cost = lowered.compile().cost_analysis() or {}
    if isinstance(cost, list):  # older JAX: one dict per device
        cost = cost[0] if cost else {}
    flops = float(cost.get("flops", float("nan")))
    return {
        "num_draws": num_draws,
        "num_steps": num_steps,
        "weights": weights,
        "seconds": median,
        "draws_per_second": num_draws / median,
        "flops_per_draw": flops / num_draws,
        "flops_per_second": flops / median,
    }


def matmul_rate(rows: int, inner: int, columns: int, repeats: int = 7) -> float:
    """FLOP per second of a jitted float32 ``(rows x inner) @ (inner x columns)``.

    The reference for a FLOP rate on this device: at the network's layer shape, what
    its draws could at best reach; at a large square shape, the device's peak.
    """
    a = jnp.ones((rows, inner), jnp.float32)
    b = jnp.ones((inner, columns), jnp.float32)
    product = jax.jit(jnp.matmul)
    jax.block_until_ready(product(a, b))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(product(a, b))
        seconds.append(time.perf_counter() - start)
    return 2.0 * rows * inner * columns / float(np.median(seconds))
