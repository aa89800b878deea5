r"""PIS and DDS: diffusion samplers against a linear-Gaussian reference process.

PIS (Zhang & Chen 2022) and DDS (Vargas et al. 2023) train a control ``u`` of the SDE

.. math:: dX_t = [f(t) X_t + \sigma(t) u(X_t, t)]\,dt + \sigma(t)\,dW_t

by the KL divergence to a *reference* path law: the uncontrolled-by-the-network
process with control ``u_ref = g(t) x``, started at the prior, whose terminal law
is a known Gaussian.  Time is generative, ``t`` in ``[0, 1]`` (target at ``t = 1``):

* **PIS**: ``f = 0``, ``sigma = 1``, ``g = 0``, prior the point mass at 0; the
  reference is a Brownian motion, terminal law ``N(0, I)`` (the reference code's
  ``sigma = sqrt(0.2)`` over ``T = 5``, rescaled to ``[0, 1]``).
* **DDS** (Euler version): the VP schedule of the other samplers, ``f = beta / 2``,
  ``sigma = sqrt(beta)``, ``g = -sigma``, prior ``N(0, I)``; the reference is the
  Ornstein-Uhlenbeck process that keeps ``N(0, I)`` in continuous time.

The network gives the deviation from the reference, the "score" control of the
reference code: ``delta = clip(NN(x, t, d)) + clip(grad log rho(x)) clip(s(t))``,
``u = g(t) x + delta``, with the gate ``s`` starting at 0.01, so that the untrained
sampler is nearly the reference.

**Weights, exact in discrete time.**  With Euler-Maruyama steps the reference is a
Gaussian chain ``x_{n+1} = a_n x_n + sigma_n dW_n``, ``a_n = 1 + (f_n + sigma_n g_n)
dt``, whose marginal variance follows ``v_{n+1} = a_n^2 v_n + sigma_n^2 dt`` from the
prior's (0 for PIS, 1 for DDS): exactly 1 for PIS at every step count; for DDS 1.0076
at 128 steps, but 26 at one step.  The target path law is ``rho(x_N) / Z`` times the
reference's law of the path given its end, so

.. math::
    \log w = \log\rho(x_N) - \log N(x_N; 0, v_N I)
    - \sum_n \big[\tfrac12 |\delta_n|^2 dt + \delta_n \cdot dW_n\big]

has ``E[w] = Z`` for any control and any number of steps (the two chains' Gaussian
kernels differ only in their means, by ``sigma_n delta_n dt``).  For DDS the prior
draws are truncated like the other samplers' (``ConsistencyConfig.prior_bound``): the
weights then also carry ``log N(x_0) - log q_0(x_0)``, a constant, and ``E[w]`` misses
the target mass whose reference paths start outside the box.

**Training** minimises ``KL = E[sum_n |delta_n|^2 dt / 2 + log N(x_N; 0, v_N I) -
log rho(x_N)] + log Z`` with pathwise gradients: the paths are simulated with the
control being trained and differentiated through (the target score enters the control
as a constant input, as in the reference code).  Memory grows with the number of
steps.  With ``ConsistencyConfig(save_memory=True)`` the KL's gradient is instead
estimated on detached paths, ``grad KL = Cov(log q/p, grad log q)`` (the
likelihood-ratio estimator, half the log-variance loss's gradient), recomputing the
paths rather than keeping them: memory flat in the number of steps, another
estimator of the same gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from .consistency import (
    ConsistencyConfig,
    SamplerAlgorithm,
    SCDSState,
    ema_update,
)
from .diffusion import (
    DetachedDynamics,
    detached_gradient,
    gated_deviation,
    masked_variance,
    sample_prior,
    simulate_detached,
    standard_normal_logdensity,
    target_score_fn,
)
from .flow import truncated_normal_logdensity
from .networks import ControlNetwork
from .path_weights import PathDraws
from .sde import AbstractSchedule, LinearSchedule

__all__ = [
    "REFERENCE_METHODS",
    "GATE_BIAS",
    "ReferenceProcess",
    "ReferenceInfo",
    "simulate_reference",
    "draw_reference",
    "reference_sampler",
]

#: The methods trained against a reference process.
REFERENCE_METHODS = ("pis", "dds")
#: Initial value of the score gate ``s(t)`` (the reference code's ``ScoreCtrl``).
GATE_BIAS = 0.01


class ReferenceProcess(eqx.Module):
    """The reference process of PIS or DDS.

    Attributes:
        kind: ``"pis"`` or ``"dds"``.
        schedule: DDS's noise schedule (unused by PIS).

    Example:
        >>> round(float(ReferenceProcess("pis").terminal_variance(4)), 6)
        1.0
        >>> round(float(ReferenceProcess("dds").terminal_variance(128)), 4)
        1.0076
    """

    kind: str = eqx.field(static=True)
    schedule: AbstractSchedule = LinearSchedule()

    def __check_init__(self):
        if self.kind not in REFERENCE_METHODS:
            raise ValueError(
                f"A reference process is one of {REFERENCE_METHODS}; got {self.kind!r}."
            )

    def coefficients(self, t: Float[Array, ""]):
        """``(f(t), sigma(t), g(t))``: drift factor, diffusion, reference gain."""
        if self.kind == "pis":
            return 0.0, 1.0, 0.0
        sigma = self.schedule.sigma(t)
        return 0.5 * self.schedule.beta(t), sigma, -sigma

    @property
    def prior_variance(self) -> float:
        """Variance of the prior: 0 (a point mass) for PIS, 1 for DDS."""
        return 0.0 if self.kind == "pis" else 1.0

    def terminal_variance(self, num_steps: int) -> Float[Array, ""]:
        """Variance ``v_N`` of the reference chain's end after ``num_steps`` steps."""
        dt = 1.0 / num_steps

        def advance(variance, t):
            f, sigma, g = self.coefficients(t)
            a = 1.0 + (f + sigma * g) * dt
            return a**2 * variance + sigma**2 * dt, None

        times = jnp.arange(num_steps) * dt
        variance, _ = jax.lax.scan(advance, jnp.asarray(self.prior_variance), times)
        return variance


class ReferenceInfo(NamedTuple):
    """Per-iteration diagnostics of PIS and DDS training.

    Attributes:
        kl_loss: the training objective, ``(KL - log Z) / dim`` on the batch.
        log_variance: ``Var(log w) / dim`` of the same paths (with the Ito term),
            the quantity DIS minimises: zero at the optimum, shown on the progress
            bar and watched for divergence.
        kept_fraction: fraction of paths whose cost is finite.
    """

    kl_loss: Array
    log_variance: Array
    kept_fraction: Array


class _Path(NamedTuple):
    x: Array
    log_prior_ratio: Array
    running: Array
    ito: Array


def _starts(process, prior_key, num_samples, dim, prior_bound):
    """The paths' starts and ``log N(x_0; 0, I) - log q_0(x_0)`` (zero for PIS)."""
    if process.kind == "pis":
        return jnp.zeros((num_samples, dim)), jnp.zeros(num_samples)
    x0 = sample_prior(prior_key, (num_samples, dim), prior_bound)
    log_prior_ratio = jax.vmap(
        lambda x: (
            standard_normal_logdensity(x) - truncated_normal_logdensity(x, prior_bound)
        )
    )(x0)
    return x0, log_prior_ratio


def _deviations(network, xs, t, dt, scores, clip):
    """The control's deviations ``delta`` from the reference for a batch of states."""
    embedding, gate = network.conditioning(t, dt)
    return jax.vmap(lambda x, s: gated_deviation(network, x, embedding, gate, s, clip))(
        xs, scores
    )


def _advance(process, x, t, dt, delta, noise):
    """One Euler-Maruyama step of the controlled SDE."""
    f, sigma, g = process.coefficients(t)
    return x + (f * x + sigma * (g * x + delta)) * dt + sigma * noise


def simulate_reference(
    rng_key: PRNGKeyArray,
    network: ControlNetwork,
    process: ReferenceProcess,
    score_fn: Callable,
    *,
    num_samples: int,
    dim: int,
    num_steps: int,
    clip: Float[Array, ""],
    prior_bound: float,
) -> _Path:
    """Euler-Maruyama paths of the controlled SDE, with their running costs.

    Differentiable in the network's weights through the paths (the target score is a
    constant input); the gradient keeps every step.

    Returns:
        The final states, ``log N(x_0; 0, I) - log q_0(x_0)`` (zero for PIS), and per
        path ``sum_n |delta_n|^2 dt / 2`` and ``sum_n delta_n . dW_n``.
    """
    prior_key, noise_key = jax.random.split(rng_key)
    x0, log_prior_ratio = _starts(process, prior_key, num_samples, dim, prior_bound)
    dt = 1.0 / num_steps
    score_fn = jax.vmap(score_fn)

    def body(carry, inputs):
        x, running, ito = carry
        t, key = inputs
        scores = jax.lax.stop_gradient(score_fn(x))
        delta = _deviations(network, x, t, dt, scores, clip)
        noise = jnp.sqrt(dt) * jax.random.normal(key, x.shape, x.dtype)
        running = running + 0.5 * jnp.sum(delta**2, -1) * dt
        ito = ito + jnp.sum(delta * noise, -1)
        return (_advance(process, x, t, dt, delta, noise), running, ito), None

    times = jnp.arange(num_steps) * dt
    keys = jax.random.split(noise_key, num_steps)
    zeros = jnp.zeros(num_samples)
    (x, running, ito), _ = jax.lax.scan(body, (x0, zeros, zeros), (times, keys))
    return _Path(x, log_prior_ratio, running, ito)


def _terminal_logdensity(process, num_steps, x):
    """``log N(x; 0, v_N I)`` of each row of ``x``: the reference chain's end."""
    variance = process.terminal_variance(num_steps)
    log_det = 0.5 * x.shape[-1] * jnp.log(variance)
    return jax.vmap(standard_normal_logdensity)(x / jnp.sqrt(variance)) - log_det


def draw_reference(
    rng_key: PRNGKeyArray,
    network: ControlNetwork,
    process: ReferenceProcess,
    logdensity_fn: Callable,
    config: ConsistencyConfig,
    num_samples: int,
    num_steps: int,
) -> PathDraws:
    """Draw with ``num_steps`` Euler-Maruyama steps, with exact path weights.

    Args:
        rng_key: PRNG key.
        network: the control network (e.g. the EMA weights).
        process: the reference process it was trained against.
        logdensity_fn: log density of one flat (whitened) vector.
        config: the sampler's settings (prior bound, clip).
        num_samples: number of draws.
        num_steps: equal steps from ``t = 0`` to ``t = 1``.

    Returns:
        :class:`~numpyro_cds.path_weights.PathDraws`: ``log rho(x) - log_density``
        is each draw's importance log weight (module docstring).
    """
    dim = network.output_layer.out_features
    clip = config.clip(jnp.asarray(jnp.iinfo(jnp.int32).max))
    path = simulate_reference(
        rng_key,
        network,
        process,
        target_score_fn(logdensity_fn),
        num_samples=num_samples,
        dim=dim,
        num_steps=num_steps,
        clip=clip,
        prior_bound=config.drawing_bound(dim),
    )
    log_density = (
        _terminal_logdensity(process, num_steps, path.x)
        + path.running
        + path.ito
        - path.log_prior_ratio
    )
    return PathDraws(path.x, log_density)


def reference_sampler(
    logdensity_fn: Callable,
    dim: int,
    config: ConsistencyConfig,
    optimizer: optax.GradientTransformation,
    kind: str,
    schedule: AbstractSchedule | None = None,
) -> SamplerAlgorithm:
    """PIS or DDS ``init``, ``step`` and ``sample`` functions for one target.

    Args:
        logdensity_fn: log density of one flat (whitened) vector, up to a constant.
        dim: its dimension.
        config: the network, batch, steps, clip and EMA settings (the consistency
            and volume weights are not used).
        optimizer: the optax transformation (one update per iteration).
        kind: ``"pis"`` or ``"dds"``.
        schedule: DDS's noise schedule, :class:`~numpyro_cds.sde.LinearSchedule` by
            default.

    Returns:
        A :class:`~numpyro_cds.consistency.SamplerAlgorithm` whose ``sample`` draws
        with the SDE (``log_density="path"`` gives the path weights; the flow kinds
        are refused) and whose info is :class:`ReferenceInfo`.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax
        >>> config = ConsistencyConfig(num_sde_steps=4, batch_size=8, width=8)
        >>> algo = reference_sampler(lambda x: -0.5 * jnp.sum(x**2), 2, config,
        ...                          optax.adam(1e-3), "pis")
        >>> state, static = algo.init(jax.random.key(0))
        >>> state, info = eqx.filter_jit(algo.step)(jax.random.key(1), state, static)
        >>> algo.sample(jax.random.key(2), state.ema_params, static, 5, 4).shape
        (5, 2)
    """
    process = ReferenceProcess(kind, LinearSchedule() if schedule is None else schedule)
    score_fn = target_score_fn(logdensity_fn)
    steps = config.num_sde_steps

    def init(rng_key):
        network = ControlNetwork(
            dim,
            width=config.width,
            depth=config.depth,
            gate_bias=GATE_BIAS,
            score_form="gated",
            state_scale=config.state_scale,
            key=rng_key,
        )
        params, static = eqx.partition(network, eqx.is_inexact_array)
        state = SCDSState(
            params, params, optimizer.init(params), jnp.zeros((), jnp.int32)
        )
        return state, static

    def objective(params, static, rng_key, clip):
        path = simulate_reference(
            rng_key,
            eqx.combine(params, static),
            process,
            score_fn,
            num_samples=config.batch_size,
            dim=dim,
            num_steps=steps,
            clip=clip,
            prior_bound=config.training_bound(dim),
        )
        kl, log_q_over_p, keep = path_costs(path.running, path.ito, path.x)
        variance, count = masked_variance(jax.lax.stop_gradient(log_q_over_p), keep)
        return kl / dim, (variance / dim, count / keep.size)

    def path_costs(running, ito, x):
        """The batch's KL estimate, each path's ``log q/p``, the usable paths.

        A path's cost is ``running + log N(x_N; 0, v_N I) - log rho(x_N)``; its
        ``log q/p`` adds the Ito term (zero mean).  Paths with a non-finite cost or
        one above ``max_rnd`` are left out.
        """
        cost = running + _terminal_logdensity(process, steps, x)
        cost = cost - jax.vmap(logdensity_fn)(x)
        keep = jnp.isfinite(cost) & (cost < config.max_rnd)
        count = jnp.maximum(jnp.sum(keep), 1)
        return jnp.sum(jnp.where(keep, cost, 0.0)) / count, cost + ito, keep

    def detached_value_and_grad(params, static, rng_key, clip):
        """The KL and its likelihood-ratio gradient, keeping nothing per step.

        With paths simulated by the current control, ``grad KL = Cov(log q/p,
        grad log q)`` (the log-variance loss's gradient, halved), and ``grad log q``
        of a path is ``sum_n J_n^T dW_n`` (:func:`~numpyro_cds.diffusion.
        detached_gradient`).
        """
        dynamics = DetachedDynamics(
            control=lambda p, x, t, dt, scores: _deviations(
                eqx.combine(p, static), x, t, dt, scores, clip
            ),
            advance=lambda x, t, dt, delta, noise: _advance(
                process, x, t, dt, delta, noise
            ),
        )
        prior_key, noise_key = jax.random.split(rng_key)
        x0, _ = _starts(
            process, prior_key, config.batch_size, dim, config.training_bound(dim)
        )
        paths = simulate_detached(noise_key, params, dynamics, score_fn, x0, steps)
        kl, log_q_over_p, keep = path_costs(
            paths.running_cost, paths.ito, paths.final_states
        )
        (variance, count), weights = jax.value_and_grad(masked_variance, has_aux=True)(
            log_q_over_p, keep
        )
        grads = detached_gradient(
            noise_key, params, dynamics, score_fn, x0, steps, 0.5 * weights / dim
        )
        return (kl / dim, (variance / dim, count / keep.size)), grads

    def step(rng_key, state, static):
        clip = config.clip(state.iteration)
        value_and_grad = (
            detached_value_and_grad
            if config.save_memory
            else jax.value_and_grad(objective, has_aux=True)
        )
        (kl, (variance, kept)), grads = value_and_grad(
            state.params, static, rng_key, clip
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = eqx.apply_updates(state.params, updates)
        ema_params = ema_update(config, state.iteration, state.ema_params, params)
        new_state = SCDSState(params, ema_params, opt_state, state.iteration + 1)
        return new_state, ReferenceInfo(kl, variance, kept)

    def sample(rng_key, params, static, num_samples, num_steps, log_density=None):
        if log_density not in (None, "path"):
            raise ValueError(
                f"{kind.upper()} draws with its SDE: log_density must be None or "
                f"'path', got {log_density!r}."
            )
        draws = draw_reference(
            rng_key,
            eqx.combine(params, static),
            process,
            logdensity_fn,
            config,
            num_samples,
            num_steps,
        )
        return draws if log_density == "path" else draws.x

    return SamplerAlgorithm(init, step, sample, loss_name="log_variance")
