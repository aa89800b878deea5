"""Generic training loop: ``lax.scan`` over chunks of iterations, one host sync a chunk.

:func:`fit` drives any ``step(rng_key, state, static) -> (state, info)`` whose state has
an ``iteration`` counter.  The key of iteration ``i`` is ``fold_in(rng_key, i)``, so a
run that is interrupted and resumed gives exactly the draws of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from .sharding import replicate

__all__ = ["TrainConfig", "default_optimizer", "fit"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        num_train_steps: training iterations (two optimiser updates each for SCDS;
            CDDS trains its teacher and then its student this many each), or
            ``"auto"``: train until the training monitor's held-out score stops
            improving (:class:`~numpyro_cds.monitor.MonitorConfig`, ``plateau_*``),
            at most ``max_train_steps`` iterations.
        max_train_steps: the most iterations of an ``"auto"`` training.
        max_time: seconds after which a training stops (each of a CDDS run's two),
            whatever ``num_train_steps``; None for no limit.  Unlike the other
            stops it depends on the machine, so a resumed run may stop elsewhere.
        learning_rate: initial Adam learning rate.
        final_learning_rate_fraction: the learning rate decays exponentially to this
            fraction of its initial value at the last iteration (at
            ``max_train_steps`` for ``"auto"``).
        max_grad_norm: global-norm clip of each update.
        weight_decay: coupled L2 penalty added to the gradients before the clip
            (PyTorch Adam's ``weight_decay``; the SCDS reference uses 1e-7).
        chunk_size: iterations compiled into one ``lax.scan`` (one host sync each).
    """

    num_train_steps: int | str = "auto"
    max_train_steps: int = 4000
    max_time: float | None = None
    learning_rate: float = 5e-3
    final_learning_rate_fraction: float = 0.02
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    chunk_size: int = 50

    def __post_init__(self):
        if self.num_train_steps != "auto":
            _check_positive_int("num_train_steps", self.num_train_steps, ' or "auto"')
        for name in ("max_train_steps", "chunk_size"):
            _check_positive_int(name, getattr(self, name))
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(
                f"max_time must be a positive number of seconds or None, got "
                f"{self.max_time!r}."
            )
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be positive, got {self.learning_rate}."
            )
        if not 0 < self.final_learning_rate_fraction <= 1:
            raise ValueError("final_learning_rate_fraction must lie in (0, 1].")
        if not self.max_grad_norm > 0:
            raise ValueError("max_grad_norm must be positive.")
        if not self.weight_decay >= 0:
            raise ValueError(
                f"weight_decay must be non-negative, got {self.weight_decay}."
            )

    @property
    def auto(self) -> bool:
        """Whether the training stops when the held-out score stops improving."""
        return self.num_train_steps == "auto"

    @property
    def total_steps(self) -> int:
        """The most iterations: ``num_train_steps``, or ``max_train_steps`` if auto."""
        return self.max_train_steps if self.auto else self.num_train_steps


def _check_positive_int(name, value, alternative=""):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be a positive integer{alternative}, got {value!r}."
        )


def default_optimizer(
    config: TrainConfig, updates_per_step: int = 2
) -> optax.GradientTransformation:
    """NaNs zeroed, non-finite updates skipped, weight decay, clip, decaying Adam."""
    total_updates = updates_per_step * config.total_steps
    schedule = optax.exponential_decay(
        config.learning_rate,
        transition_steps=total_updates,
        decay_rate=config.final_learning_rate_fraction,
        end_value=config.learning_rate * config.final_learning_rate_fraction,
    )
    return optax.chain(
        optax.zero_nans(),
        optax.apply_if_finite(
            optax.chain(
                optax.add_decayed_weights(config.weight_decay),
                optax.clip_by_global_norm(config.max_grad_norm),
                optax.adam(schedule),
            ),
            max_consecutive_errors=1_000_000,
        ),
    )


def _run_chunk(step, chunk_size, rng_key, state, static, num_train_steps):
    # The step is traced once: its jaxpr is the live branch, its output shapes give
    # the skipped iterations' NaN info.  (Tracing it a second time, for the shapes,
    # was a third of the time a tiny training took.)
    traced, out_shape = jax.make_jaxpr(
        lambda key, state: step(key, state, static), return_shape=True
    )(rng_key, state)
    run_traced = jax.extend.core.jaxpr_as_fun(traced)
    out_tree, info_shape = jax.tree.structure(out_shape), out_shape[1]

    def live(key, state):
        return jax.tree.unflatten(out_tree, run_traced(*jax.tree.leaves((key, state))))

    def skip(key, state):
        nan = jax.tree.map(lambda a: jnp.full(a.shape, jnp.nan, a.dtype), info_shape)
        return state, nan

    def body(state, _):
        key = jax.random.fold_in(rng_key, state.iteration)
        return jax.lax.cond(state.iteration < num_train_steps, live, skip, key, state)

    return jax.lax.scan(body, state, None, length=chunk_size)


def fit(
    rng_key: jax.Array,
    step: Callable,
    state: Any,
    static: Any,
    num_train_steps: int,
    *,
    chunk_size: int = 50,
    progress_bar: bool = True,
    on_chunk: Callable[[Any, Any], None] | None = None,
    loss_name: str = "diffusion_loss",
) -> tuple[Any, Any]:
    """Run ``step`` until ``state.iteration`` reaches ``num_train_steps``.

    Args:
        rng_key: base key; iteration ``i`` uses ``fold_in(rng_key, i)``.
        step: ``step(rng_key, state, static) -> (state, info)``.
        state: training state with an integer ``iteration`` field.
        static: non-array part of the model, passed to ``step`` unchanged.
        num_train_steps: total iterations; training resumes from ``state.iteration``.
        chunk_size: iterations per compiled ``lax.scan``.
        progress_bar: show a tqdm bar with the current loss.
        on_chunk: called with ``(state, info)`` after every chunk (e.g. to keep the
            state safe against interruption, or to score it).  It may return a dict:
            its entries are shown on the progress bar, and ``"stop": True`` ends the
            training there.
        loss_name: field of ``info`` shown on the progress bar.

    Returns:
        The final state and the stacked ``info`` of the iterations run now (NumPy).
    """
    run_chunk = eqx.filter_jit(
        lambda key, state, static, total: _run_chunk(
            step, chunk_size, key, state, static, total
        )
    )
    state = replicate(state)
    start = int(state.iteration)
    infos = []
    with tqdm(
        total=num_train_steps,
        initial=start,
        disable=not progress_bar,
        desc="training",
        dynamic_ncols=True,
    ) as bar:
        while int(state.iteration) < num_train_steps:
            before = int(state.iteration)
            state, info = run_chunk(rng_key, state, static, num_train_steps)
            done = int(state.iteration) - before
            info = jax.tree.map(lambda a, n=done: np.asarray(a)[:n], info)
            infos.append(info)
            shown = {} if on_chunk is None else dict(on_chunk(state, info) or {})
            stop = shown.pop("stop", False)
            bar.update(done)
            bar.set_postfix(loss=f"{np.nanmean(getattr(info, loss_name)):.4g}", **shown)
            if stop:
                break
    if not infos:
        return state, None
    return state, jax.tree.map(lambda *a: np.concatenate(a), *infos)
