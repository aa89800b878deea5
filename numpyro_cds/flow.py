"""The k-step probability-flow map as a normalising flow, with its log-density.

Sampling with ``k`` deterministic Euler steps of the probability-flow ODE maps a prior
draw ``x_0`` to ``x_k = T_k(...T_1(x_0))``.  By the change of variables its density is
``log q(x_k) = log p_prior(x_0) - sum_j log |det J_j(x_{j-1})|`` with ``J_j`` the
Jacobian of step ``j``, so ``log rho(x_k) - log q(x_k)`` is a valid importance log
weight at every step count, unlike the boundary-only weight of the SCDS/CDDS papers,
which leaves the volume change out.

The log-determinants are exact (``jax.jacfwd`` + ``slogdet``: ``dim`` forward-mode
passes per step, each including a Hessian-vector product of the target through the
Langevin input of the control) or, in high dimension, an unbiased stochastic estimate
(:func:`stochastic_log_abs_det`).  With exact log-determinants the sign of every step's
determinant is kept: if it differs between draws (or is zero), that step folds space
onto itself, it is not invertible, and the density formula does not hold
(:func:`folded_steps`).

The prior is the standard normal truncated element-wise at ``+-bound``; its log density
includes the truncation constant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf
from jaxtyping import Array, Float

from .diffusion import control, standard_normal_logdensity
from .sde import AbstractSchedule, probability_flow_step

__all__ = [
    "FlowDraws",
    "truncated_normal_logdensity",
    "flow_step_fn",
    "exact_log_abs_det",
    "stochastic_log_abs_det",
    "run_flow",
    "step_with_log_det",
    "log_det_keys",
    "folded_steps",
]


class FlowDraws(NamedTuple):
    """Draws of the k-step flow.

    Attributes:
        x: final states, shape ``(num_samples, dim)``.
        log_density: ``log q(x)`` of the flow at each draw (only with log-dets).
        step_signs: sign of each step's Jacobian determinant at each draw, shape
            ``(num_steps, num_samples)`` (only with log-dets).
    """

    x: Float[Array, "num_samples dim"]
    log_density: Float[Array, " num_samples"] | None = None
    step_signs: Float[Array, "num_steps num_samples"] | None = None


def truncated_normal_logdensity(x: Float[Array, " dim"], bound: float) -> Array:
    """Log density of ``N(0, I)`` truncated element-wise to ``[-bound, bound]``."""
    log_mass = jnp.log(erf(bound / jnp.sqrt(2.0)))
    return standard_normal_logdensity(x) - x.shape[-1] * log_mass


def flow_step_fn(
    network,
    schedule: AbstractSchedule,
    score_fn: Callable | None,
    t: Float[Array, ""],
    dt: float,
    clip: Float[Array, ""],
    score_weight: Float[Array, ""] | float = 1.0,
) -> Callable:
    """One probability-flow Euler step of one state, ``x -> x + dt b(x, t, dt)``.

    Args:
        network: the control network.
        schedule: the noise schedule.
        score_fn: ``grad log rho``, or None for a control without the target score
            (at ``t = 0``, where its weight is zero, and in steps larger than
            ``ConsistencyConfig.target_score_max_step``).
        t: generative time of the step's start.
        dt: step length (also the step size the control is conditioned on).
        clip: element-wise clip of the control's parts.
        score_weight: a traced 0/1 switch of the target score (see
            :func:`~numpyro_cds.diffusion.control`).

    Returns:
        The step as a function of one state.
    """

    def step(x):
        score = None if score_fn is None else score_fn(x)
        u = control(network, schedule, x, t, dt, score, clip, score_weight)
        return probability_flow_step(schedule, x, t, dt, u)

    return step


def exact_log_abs_det(step: Callable, x: Float[Array, " dim"]):
    """``(log |det J|, sign det J)`` of ``step`` at ``x`` (``jacfwd``, ``slogdet``)."""
    sign, log_abs_det = jnp.linalg.slogdet(jax.jacfwd(step)(x))
    return log_abs_det, sign


def stochastic_log_abs_det(
    rng_key,
    step: Callable,
    x: Float[Array, " dim"],
    num_power_iterations: int = 20,
    continue_probability: float = 0.9,
    num_probes: int = 4,
):
    """Unbiased stochastic estimate of ``log |det J|`` of ``step`` at ``x``.

    ``log |det J| = log det(S) / 2`` with ``S = J^T J``.  With ``c`` from a power
    iteration (1.5 times the Rayleigh quotient of ``S``),
    ``log det S = d log c - sum_k tr(B^k) / k`` for ``B = I - S / c``, a series that
    converges because the eigenvalues of ``B`` lie in ``(-1, 1)``.  Each trace is
    estimated with one Rademacher probe (Hutchinson) and the series is cut at a random
    length ``K`` with ``P(K >= k) = q^(k - 1)``, each kept term divided by that
    probability (Russian roulette), so the estimate is unbiased for any ``c`` that
    makes the series converge.  Its variance is finite when ``(1 - l_min / c)^2 < q``
    (``l_min`` the smallest eigenvalue of ``S``), i.e. for steps close enough to the
    identity; a heavy-tailed weight distribution (Pareto k-hat) shows when it is not.
    Each term costs one Jacobian-vector and one vector-Jacobian product.

    Args:
        rng_key: PRNG key.
        step: the step map of one state.
        x: the state.
        num_power_iterations: power iterations for ``c``.
        continue_probability: ``q``, the probability of adding one more term.
        num_probes: independent probe-and-length draws averaged.

    Returns:
        ``(estimate of log |det J|, sign)``; the sign is NaN (unknown) here.
    """
    _, jvp = jax.linearize(step, x)
    vjp = jax.linear_transpose(jvp, x)

    def gram(v):
        return vjp(jvp(v))[0]

    power_key, probe_key, length_key = jax.random.split(rng_key, 3)
    v = jax.random.normal(power_key, x.shape)

    def power(v, _):
        w = gram(v)
        return w / jnp.linalg.norm(w), None

    v, _ = jax.lax.scan(power, v / jnp.linalg.norm(v), None, num_power_iterations)
    scale = 1.5 * jnp.vdot(v, gram(v))

    def series(probe_key, length_key):
        probe = jax.random.rademacher(probe_key, x.shape, dtype=x.dtype)

        def add_term(carry):
            k, power_probe, total, key, _ = carry
            power_probe = power_probe - gram(power_probe) / scale
            weight = continue_probability ** (k - 1.0)
            total = total - jnp.vdot(probe, power_probe) / (k * weight)
            key, coin = jax.random.split(key)
            more = jax.random.uniform(coin) < continue_probability
            return k + 1.0, power_probe, total, key, more

        init = (1.0, probe, jnp.asarray(0.0, x.dtype), length_key, jnp.asarray(True))
        return jax.lax.while_loop(lambda carry: carry[-1], add_term, init)[2]

    probe_keys = jax.random.split(probe_key, num_probes)
    length_keys = jax.random.split(length_key, num_probes)
    series = jnp.mean(jax.vmap(series)(probe_keys, length_keys))
    log_det_gram = x.shape[-1] * jnp.log(scale) + series
    return 0.5 * log_det_gram, jnp.asarray(jnp.nan)


def log_det_keys(rng_key, log_det: str, num_steps: int, num_samples: int):
    """Keys of the stochastic log-determinants, one per step and draw (else zeros)."""
    if log_det == "stochastic":
        return jax.random.split(rng_key, (num_steps, num_samples))
    return jnp.zeros((num_steps, num_samples))


def step_with_log_det(step: Callable, x, step_keys, log_det: str | None):
    """``step`` applied to each draw of ``x``, with its log-determinant and sign.

    Args:
        step: a map of one state.
        x: the draws, shape ``(num_samples, dim)``.
        step_keys: one key per draw (stochastic log-determinants only).
        log_det: ``"exact"``, ``"stochastic"`` or None (no log-determinant).

    Returns:
        ``(new draws, (log |det J|, sign) or None)``.
    """
    if log_det is None:
        return jax.vmap(step)(x), None
    if log_det == "exact":
        log_abs_det, sign = jax.vmap(lambda xi: exact_log_abs_det(step, xi))(x)
    else:
        log_abs_det, sign = jax.vmap(
            lambda key, xi: stochastic_log_abs_det(key, step, xi)
        )(step_keys, x)
    return jax.vmap(step)(x), (log_abs_det, sign)


def run_flow(
    network,
    schedule: AbstractSchedule,
    score_fn: Callable,
    x0: Float[Array, "num_samples dim"],
    num_steps: int,
    clip: Float[Array, ""],
    prior_bound: float | None = None,
    log_det: str = "exact",
    rng_key=None,
    use_target_score: bool = True,
) -> FlowDraws:
    """Push prior draws through ``num_steps`` Euler steps of the probability flow.

    Args:
        network: the control network (conditioned on the step size ``1 / num_steps``).
        schedule: the noise schedule.
        score_fn: ``grad log rho`` of one state.
        x0: prior draws.
        num_steps: number of equal steps from ``t = 0`` to ``t = 1``.
        clip: element-wise clip of the control's parts.
        prior_bound: truncation of the prior; if given, also compute each draw's
            log density under the flow.
        log_det: ``"exact"`` (:func:`exact_log_abs_det`) or ``"stochastic"``
            (:func:`stochastic_log_abs_det`, which needs ``rng_key``; its signs are
            NaN).
        rng_key: PRNG key of the stochastic log-determinants.
        use_target_score: False evaluates every step's control without the target
            score (see :func:`~numpyro_cds.diffusion.control`); no gradient of the
            target is then computed.

    Returns:
        :class:`FlowDraws` (``log_density`` and ``step_signs`` only with
        ``prior_bound``).
    """
    if log_det not in ("exact", "stochastic"):
        raise ValueError(f"log_det must be 'exact' or 'stochastic', got {log_det!r}.")
    dt = 1.0 / num_steps
    with_density = prior_bound is not None

    keys = log_det_keys(rng_key, log_det, num_steps, x0.shape[0])

    def advance(step, x, step_keys):
        return step_with_log_det(step, x, step_keys, log_det if with_density else None)

    # At t = 0 the target score has weight zero in the control: skip evaluating it.
    x, first = advance(
        flow_step_fn(network, schedule, None, 0.0, dt, clip), x0, keys[0]
    )

    later_score_fn = score_fn if use_target_score else None

    def body(x, inputs):
        t, step_keys = inputs
        step = flow_step_fn(network, schedule, later_score_fn, t, dt, clip)
        return advance(step, x, step_keys)

    x, rest = jax.lax.scan(body, x, (jnp.arange(1, num_steps) * dt, keys[1:]))
    if not with_density:
        return FlowDraws(x)
    log_abs_det = first[0] + jnp.sum(rest[0], axis=0)
    signs = jnp.concatenate([first[1][None], rest[1]])
    log_prior = jax.vmap(lambda xi: truncated_normal_logdensity(xi, prior_bound))(x0)
    return FlowDraws(x, log_prior - log_abs_det, signs)


def folded_steps(step_signs) -> list[int]:
    """Steps (1-based) whose determinant is zero somewhere or changes sign across draws.

    A continuous step map whose Jacobian determinant takes both signs on a connected
    set vanishes in between, so the step is not invertible there.  A constant negative
    sign is an orientation reversal, which is harmless.

    Args:
        step_signs: :attr:`FlowDraws.step_signs`.

    Returns:
        The folding steps, empty if none was detected.
    """
    step_signs = np.asarray(step_signs)
    mixed = (np.min(step_signs, axis=1) != np.max(step_signs, axis=1)) | np.any(
        step_signs == 0, axis=1
    )
    return [int(j) + 1 for j in np.flatnonzero(mixed)]
