r"""The controlled diffusion sampler: control, Euler-Maruyama paths, log-variance loss.

Everything here acts on a *whitened* target: a log density ``logdensity_fn(x)`` of one
flat vector ``x`` (see :mod:`numpyro_cds.whitening`).  The control follows the "lerp"
design of DIS and SCDS (Jutras-Dube et al. 2025):

.. math::
    u(x, t, d) = \mathrm{clip}(NN(x, t, d)) + \sigma(t)\,
    \mathrm{clip}\big((1 - t)\nabla\log p_0(x) + t\,\nabla\log\rho(x)\big)\,
    \mathrm{clip}(s(t)),

with the standard normal prior ``p_0`` and element-wise clips.  At initialisation
``NN = 0`` and ``s = 1``, so the control is the Langevin-preconditioned interpolated
score.

A network with ``score_form="gated"`` (DDS's, :mod:`numpyro_cds.reference`) gives
instead the deviation ``delta = clip(NN) + clip(grad log rho) clip(s(t))`` from the
Ornstein-Uhlenbeck reference, whose drift ``-beta x / 2`` is ``u = -sigma x`` in this
convention: ``u = delta - sigma(t) x``.  The same SDE and probability-flow formulas
then hold for both forms; the flow's drift is DDS's ``sigma delta / 2``.

A control may also be evaluated *without the target score* (``target_score=None``):
the Langevin term is then the prior score ``-x`` alone, and the probability-flow step
of an untrained network is the identity at every ``t``.  The samplers use this for
steps larger than the training paths' (``ConsistencyConfig.target_score_max_step``):
an Euler step ``x + d b(x)`` whose drift holds ``d t grad log rho`` folds space
wherever ``d`` times the target's curvature exceeds about one, and its weights then
overstate ``Z``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .networks import ControlNetwork
from .sde import AbstractSchedule, euler_maruyama_step
from .sharding import shard_batch

__all__ = [
    "control",
    "batched_control",
    "gated_deviation",
    "target_score_fn",
    "standard_normal_logdensity",
    "sample_prior",
    "Paths",
    "simulate_paths",
    "log_variance_loss",
    "masked_variance",
    "DetachedDynamics",
    "DetachedPaths",
    "simulate_detached",
    "detached_gradient",
]


def standard_normal_logdensity(x: Float[Array, " dim"]) -> Float[Array, ""]:
    """Log density of ``N(0, I)`` at ``x`` (the untruncated prior density)."""
    return -0.5 * jnp.sum(x**2) - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi)


def sample_prior(rng_key: PRNGKeyArray, shape: tuple[int, ...], bound: float):
    """Standard normal draws truncated element-wise at ``+-bound``.

    The leading axis is the batch: it is split over the devices of a
    :func:`~numpyro_cds.sharding.batch_mesh`, and every path started here with it.
    """
    return shard_batch(jax.random.truncated_normal(rng_key, -bound, bound, shape))


def target_score_fn(logdensity_fn: Callable) -> Callable:
    """Gradient of ``logdensity_fn`` with non-finite entries replaced by zero."""
    grad_fn = jax.grad(logdensity_fn)
    return lambda x: jnp.nan_to_num(grad_fn(x), nan=0.0, posinf=0.0, neginf=0.0)


def gated_deviation(network, x, embedding, gate, score, clip):
    """``clip(NN(x)) + clip(score) clip(s)``: a gated-score control's deviation."""
    output = jnp.clip(network.output(x, embedding), -clip, clip)
    return output + jnp.clip(score, -clip, clip) * jnp.clip(gate, -clip, clip)


def _control_from_conditioning(
    network, schedule, x, t, embedding, gate, score, clip, score_weight=1.0
):
    if score is None:
        score, score_weight = jnp.zeros_like(x), 0.0
    if network.score_form == "gated":
        delta = gated_deviation(network, x, embedding, gate, score_weight * score, clip)
        return delta - schedule.sigma(t) * x
    # (1 - t)(-x) + t score with the target score switched on; -x with it off.
    output = jnp.clip(network.output(x, embedding), -clip, clip)
    langevin = jnp.clip(-x + score_weight * t * (x + score), -clip, clip)
    return output + schedule.sigma(t) * langevin * jnp.clip(gate, -clip, clip)


def control(
    network: ControlNetwork,
    schedule: AbstractSchedule,
    x: Float[Array, " dim"],
    t: Float[Array, ""],
    d: Float[Array, ""],
    target_score: Float[Array, " dim"] | None,
    clip: Float[Array, ""],
    score_weight: Float[Array, ""] | float = 1.0,
) -> Float[Array, " dim"]:
    """The control ``u(x, t, d)`` for one state.

    Args:
        network: the control network.
        schedule: the noise schedule (for ``sigma(t)``).
        x: the state.
        t: generative time.
        d: the step size the control is conditioned on.
        target_score: ``grad log rho(x)`` (only used with weight ``t``), or None for
            the prior score alone in the Langevin term.
        clip: element-wise clip of the network output, the Langevin term and the gate.
        score_weight: 1 uses the target score, 0 leaves it out as None does (a traced
            switch, for batches of mixed step sizes).

    Returns:
        The control, shape ``(dim,)``.
    """
    embedding, gate = network.conditioning(t, d)
    return _control_from_conditioning(
        network, schedule, x, t, embedding, gate, target_score, clip, score_weight
    )


def batched_control(network, schedule, xs, t, d, target_scores, clip):
    """:func:`control` for a batch ``xs`` sharing one time ``t`` and step size ``d``.

    ``target_scores`` None evaluates every control without the target score.
    """
    embedding, gate = network.conditioning(t, d)
    if target_scores is None:
        return jax.vmap(
            lambda x: _control_from_conditioning(
                network, schedule, x, t, embedding, gate, None, clip
            )
        )(xs)
    return jax.vmap(
        lambda x, s: _control_from_conditioning(
            network, schedule, x, t, embedding, gate, s, clip
        )
    )(xs, target_scores)


class Paths(NamedTuple):
    """Euler-Maruyama paths simulated with a detached control.

    Attributes:
        states: ``X_n`` for ``n = 0..N-1``, shape ``(num_steps, batch, dim)``.
        target_scores: ``grad log rho(X_n)``, same shape.
        controls: the control used for each step, same shape.
        noises: the Brownian increments ``dW_n``, same shape.
        final_states: ``X_N``, shape ``(batch, dim)``.
        log_prior: ``log p_0(X_0)``, shape ``(batch,)``.
        log_target: ``log rho(X_N)``, shape ``(batch,)``.
    """

    states: Array
    target_scores: Array
    controls: Array
    noises: Array
    final_states: Array
    log_prior: Array
    log_target: Array


def simulate_paths(
    rng_key: PRNGKeyArray,
    network: ControlNetwork,
    schedule: AbstractSchedule,
    logdensity_fn: Callable,
    *,
    batch_size: int,
    dim: int,
    num_steps: int,
    clip: Float[Array, ""],
    prior_bound: float,
) -> Paths:
    """Simulate ``batch_size`` Euler-Maruyama paths of the controlled SDE.

    The control is evaluated with stopped gradients: the paths are data for the
    log-variance and self-consistency losses, nothing is differentiated through them.
    """
    network = jax.lax.stop_gradient(network)
    score_fn = jax.vmap(target_score_fn(logdensity_fn))
    prior_key, noise_key = jax.random.split(rng_key)
    x0 = sample_prior(prior_key, (batch_size, dim), prior_bound)
    dt = 1.0 / num_steps
    times = jnp.arange(num_steps) * dt

    def one_step(x, inputs):
        t, key = inputs
        scores = score_fn(x)
        u = batched_control(network, schedule, x, t, dt, scores, clip)
        noise = jnp.sqrt(dt) * jax.random.normal(key, x.shape)
        x_next = euler_maruyama_step(schedule, x, t, dt, u, noise)
        return x_next, (x, scores, u, noise)

    keys = jax.random.split(noise_key, num_steps)
    final, (states, scores, controls, noises) = jax.lax.scan(
        one_step, x0, (times, keys)
    )
    return Paths(
        states=states,
        target_scores=scores,
        controls=controls,
        noises=noises,
        final_states=final,
        log_prior=jax.vmap(standard_normal_logdensity)(x0),
        log_target=jax.vmap(logdensity_fn)(final),
    )


def _finite_or_worst(log_target: Float[Array, " batch"]) -> Float[Array, " batch"]:
    """Replace non-finite target log densities by the worst finite one of the batch.

    Dropping such paths instead would let the sampler move mass into regions where the
    target overflows (e.g. the far neck of a funnel) at no cost.
    """
    finite = jnp.isfinite(log_target)
    worst = jnp.min(jnp.where(finite, log_target, jnp.inf))
    worst = jnp.where(jnp.any(finite), worst, 0.0)
    return jnp.where(finite, log_target, worst)


def masked_variance(
    values: Float[Array, " batch"], keep: Array
) -> tuple[Float[Array, ""], Array]:
    """Variance of the kept ``values`` and how many were kept (at least 1).

    Left-out entries are zeroed before use, so an infinite one gives no NaN gradient.
    """
    count = jnp.maximum(jnp.sum(keep), 1)
    values = jnp.where(keep, values, 0.0)
    mean = jnp.sum(values) / count
    return jnp.sum(jnp.where(keep, (values - mean) ** 2, 0.0)) / count, count


def log_variance_loss(
    network: ControlNetwork,
    schedule: AbstractSchedule,
    paths: Paths,
    *,
    clip: Float[Array, ""],
    max_rnd: float = 1e8,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Log-variance loss ``Var(rnd) / dim`` on detached paths (DIS, Richter-Berner).

    ``rnd = log p_0(X_0) + sum_n [u_n . (ubar_n - u_n / 2) dt + u_n . dW_n]
    - log rho(X_N)``, where ``ubar`` is the detached control that simulated the path
    and ``u`` the control being trained; its value equals the path's log
    Radon-Nikodym derivative up to the constant drift-divergence term.  A path ending
    where ``log rho`` is not finite is scored with the worst finite ``log rho`` of the
    batch; paths with a non-finite ``rnd`` or one above ``max_rnd`` are left out.

    The control is evaluated at every step of every path at once (one large matrix
    product); the gradient keeps every step's activations.  :func:`simulate_detached`
    and :func:`detached_gradient` give the same gradient in memory that does not grow
    with the number of steps.

    Returns:
        The loss and the fraction of paths kept.
    """
    num_steps, batch, dim = paths.states.shape
    dt = 1.0 / num_steps
    times = jnp.arange(num_steps) * dt
    embedding, gate = jax.vmap(lambda ti: network.conditioning(ti, dt))(times)

    def rows(a):
        return jnp.repeat(a, batch, axis=0)

    # Every step of every path as one flat batch.
    u = jax.vmap(lambda *a: _control_from_conditioning(network, schedule, *a, clip))(
        paths.states.reshape(-1, dim),
        rows(times),
        rows(embedding),
        rows(gate),
        paths.target_scores.reshape(-1, dim),
    ).reshape(paths.states.shape)
    terms = u * (paths.controls - 0.5 * u) * dt + u * paths.noises
    rnd = (
        paths.log_prior
        + jnp.sum(terms, axis=(0, 2))
        - _finite_or_worst(paths.log_target)
    )
    return _log_variance(rnd, max_rnd, dim)


def _log_variance(rnd, max_rnd, dim):
    """``(Var(rnd) / dim, kept fraction)`` over the paths whose ``rnd`` is usable."""
    value = jax.lax.stop_gradient(rnd)
    keep = jnp.isfinite(value) & (value < max_rnd)
    variance, count = masked_variance(rnd, keep)
    return variance / dim, count / keep.size


def detached_log_variance(
    rng_key: PRNGKeyArray,
    params,
    dynamics: DetachedDynamics,
    logdensity_fn: Callable,
    *,
    batch_size: int,
    dim: int,
    num_steps: int,
    prior_bound: float,
    max_rnd: float = 1e8,
    capture_steps: Array | None = None,
):
    """:func:`log_variance_loss` and its gradient, in memory flat in ``num_steps``.

    The same paths as :func:`simulate_paths` with the same key, the same loss, and
    its gradient in exact arithmetic, computed in two passes over the paths that keep
    no step (:func:`simulate_detached`, then :func:`detached_gradient`) at the price
    of simulating them twice.

    Returns:
        ``((loss, kept_fraction), grads, paths)``: ``paths`` is the
        :class:`DetachedPaths` of the first pass (its captured states).
    """
    prior_key, noise_key = jax.random.split(rng_key)
    x0 = sample_prior(prior_key, (batch_size, dim), prior_bound)
    common = (noise_key, params, dynamics, target_score_fn(logdensity_fn), x0)
    paths = simulate_detached(*common, num_steps, capture_steps=capture_steps)
    rnd = (
        jax.vmap(standard_normal_logdensity)(x0)
        + paths.running_cost
        + paths.ito
        - _finite_or_worst(jax.vmap(logdensity_fn)(paths.final_states))
    )
    (loss, kept), path_weights = jax.value_and_grad(
        lambda r: _log_variance(r, max_rnd, dim), has_aux=True
    )(rnd)
    grads = detached_gradient(*common, num_steps, path_weights)
    return (loss, kept), grads, paths


class DetachedDynamics(NamedTuple):
    """A controlled SDE's Euler-Maruyama step, split for the two detached passes.

    Attributes:
        control: ``control(params, xs, t, dt, scores)``, the controls of a batch of
            states at time ``t`` (``scores`` their target scores), differentiable in
            ``params``; its log path density against the uncontrolled process is
            ``sum_n [u_n . ubar_n dt - |u_n|^2 dt / 2 + u_n . dW_n]`` up to terms free
            of ``u``, the form of both the DIS drift and DDS's deviation.
        advance: ``advance(xs, t, dt, controls, noises)``, the next states.
    """

    control: Callable
    advance: Callable


class DetachedPaths(NamedTuple):
    """What the first detached pass keeps of its paths: nothing per step.

    Attributes:
        final_states: ``X_N``, shape ``(batch, dim)``.
        running_cost: ``sum_n |u_n|^2 dt / 2`` per path.
        ito: ``sum_n u_n . dW_n`` per path.
        captured_states: each path's state at its ``capture_steps`` entry (zeros
            when none was asked for), ``(batch, dim)``.
        captured_scores: the target score there.
    """

    final_states: Array
    running_cost: Array
    ito: Array
    captured_states: Array
    captured_scores: Array


def _walk_paths(noise_key, dynamics, score_fn, x0, num_steps, visit, extra):
    """Simulate the paths from ``x0``, letting ``visit`` choose each step's control.

    ``visit(extra, n, t, dt, x, scores, noise) -> (u, extra)``.  Every walk with the
    same ``noise_key`` draws the same noise (:func:`simulate_paths`'s convention), so
    two walks with the same controls walk the same paths.

    Returns:
        ``(final_states, extra)``.
    """
    batched_score = jax.vmap(score_fn)
    dt = 1.0 / num_steps

    def one_step(carry, inputs):
        x, extra = carry
        n, key = inputs
        t = n * dt
        noise = jnp.sqrt(dt) * jax.random.normal(key, x.shape, x.dtype)
        u, extra = visit(extra, n, t, dt, x, batched_score(x), noise)
        return (dynamics.advance(x, t, dt, u, noise), extra), None

    steps = (jnp.arange(num_steps), jax.random.split(noise_key, num_steps))
    return jax.lax.scan(one_step, (x0, extra), steps)[0]


def simulate_detached(
    noise_key: PRNGKeyArray,
    params,
    dynamics: DetachedDynamics,
    score_fn: Callable,
    x0: Float[Array, "batch dim"],
    num_steps: int,
    *,
    capture_steps: Array | None = None,
) -> DetachedPaths:
    """First pass: simulate the paths with detached controls, keeping no step.

    Args:
        noise_key: key of the Brownian increments (:func:`simulate_paths`'s second).
        params: the control's parameters (detached).
        dynamics: the SDE.
        score_fn: ``grad log rho`` of one state.
        x0: the paths' starts.
        num_steps: Euler-Maruyama steps.
        capture_steps: optional step index per path whose state (and target score)
            to keep, e.g. a self-consistency loss's start.
    """
    params = jax.lax.stop_gradient(params)
    capture = jnp.full(x0.shape[:1], -1) if capture_steps is None else capture_steps

    def visit(extra, n, t, dt, x, scores, noise):
        running, ito, captured, captured_scores = extra
        u = dynamics.control(params, x, t, dt, scores)
        here = (capture == n)[:, None]
        return u, (
            running + 0.5 * jnp.sum(u**2, -1) * dt,
            ito + jnp.sum(u * noise, -1),
            jnp.where(here, x, captured),
            jnp.where(here, scores, captured_scores),
        )

    zeros = jnp.zeros(x0.shape[:1], x0.dtype)
    extra = (zeros, zeros, jnp.zeros_like(x0), jnp.zeros_like(x0))
    final, extra = _walk_paths(
        noise_key, dynamics, score_fn, x0, num_steps, visit, extra
    )
    return DetachedPaths(final, *extra)


def detached_gradient(
    noise_key: PRNGKeyArray,
    params,
    dynamics: DetachedDynamics,
    score_fn: Callable,
    x0: Float[Array, "batch dim"],
    num_steps: int,
    path_weights: Float[Array, " batch"],
):
    """Second pass: ``sum_b path_weights_b d rnd_b / d params`` on the same paths.

    With the paths simulated by the current parameters (``ubar = u``), the derivative
    of a path's ``rnd`` in its control ``u_n`` is ``dW_n``, so the gradient is
    ``sum_n sum_b w_b J_n,b^T dW_n,b``: one vector-Jacobian product of the control per
    step, accumulated as the paths are re-simulated.  Nothing is kept per step.
    """
    params = jax.lax.stop_gradient(params)

    def visit(grads, n, t, dt, x, scores, noise):
        u, pullback = jax.vjp(lambda p: dynamics.control(p, x, t, dt, scores), params)
        (step_grads,) = pullback(path_weights[:, None] * noise)
        return u, jax.tree.map(jnp.add, grads, step_grads)

    zeros = jax.tree.map(jnp.zeros_like, params)
    return _walk_paths(noise_key, dynamics, score_fn, x0, num_steps, visit, zeros)[1]
