r"""Consistency-distilled diffusion sampler (CDDS): one step from a trained teacher.

A trained diffusion sampler (the *teacher*: DIS, i.e. SCDS without the
self-consistency loss, SCDS itself, or DDS) defines a probability-flow ODE from the
prior at ``t = 0`` to the target at ``t = 1``: all three learn the time reversal of
the same VP noising, and their controls enter the same drift
(:func:`~numpyro_cds.diffusion.control`; a DDS network's gated score form gives
DDS's flow drift ``sigma delta / 2``).  The student is a copy of the teacher's network,
so it has the teacher's score form.  CDDS (Jutras-Dube et al. 2025) distils its
flow map into a *consistency function* ``f(x, t)``, the end point of the flow from
``x`` at time ``t``, so that one evaluation ``f(x_0, 0)`` draws.

The consistency function here is one probability-flow Euler step of the student
control network to the end,

.. math::
    f_\theta(x, t) = x + (1 - t)\, b_\theta(x, t, 1 - t),

with the drift ``b`` of :func:`~numpyro_cds.sde.probability_flow_drift` and the
control conditioned on the step size ``1 - t``.  This is the boundary
parameterisation: ``f(x, 1) = x`` exactly, whatever the weights.  A one-step draw is
then the one-step flow of :func:`~numpyro_cds.consistency.draw_network`, so it carries
the same exact change-of-variables importance weight as an SCDS draw (one network
evaluation per draw).

Training pairs come from teacher trajectories generated on the fly (no stored data
set): prior draws are moved by ``N`` Euler steps of the teacher's probability flow,
and for each path a pair of states ``(x_a, x_b)`` ``gap`` fine steps apart is taken.
The student at the earlier state must land where the *target network* (an EMA of the
student, stop-gradient) lands from the later one,

.. math::
    L = \mathbb{E}\,\|f_\theta(x_a, t_a) - f_{\theta^-}(x_b, t_b)\|^2 / D,

anchored at ``t_b = 1`` by the boundary condition.  The student starts as a copy of the
teacher's network.
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
    network_sampler,
)
from .diffusion import batched_control, sample_prior, target_score_fn
from .flow import (
    FlowDraws,
    flow_step_fn,
    log_det_keys,
    step_with_log_det,
    truncated_normal_logdensity,
)
from .networks import ControlNetwork
from .sde import AbstractSchedule, LinearSchedule, probability_flow_step

__all__ = [
    "DistillationInfo",
    "consistency_function",
    "distillation_loss",
    "distillation_sampler",
    "draw_consistency",
    "run_consistency",
    "TeacherPairs",
    "teacher_pairs",
]


class DistillationInfo(NamedTuple):
    """Per-iteration diagnostics of the distillation.

    Attributes:
        distillation_loss: the consistency-distillation loss.
        kept_fraction: fraction of the pairs with finite student and target end
            points (the others are left out of the loss).
    """

    distillation_loss: Array
    kept_fraction: Array


class TeacherPairs(NamedTuple):
    """Two states of each teacher trajectory, ``gap`` fine steps apart.

    Attributes:
        start: the first state's step index ``n`` (time ``n / N``), per path.
        end: the second state's, ``n + gap``.
        first: the state ``x_n``.
        first_score: the target score there.
        second: the state ``x_{n + gap}``.
        second_score: the target score there (zero at ``t = 1``, where the
            consistency function ignores it).
    """

    start: Array
    end: Array
    first: Array
    first_score: Array
    second: Array
    second_score: Array


def teacher_pairs(
    rng_key: PRNGKeyArray,
    teacher: ControlNetwork,
    schedule: AbstractSchedule,
    score_fn: Callable,
    start: Array,
    *,
    gap: int,
    dim: int,
    num_steps: int,
    clip: Float[Array, ""],
    prior_bound: float,
) -> TeacherPairs:
    """Euler trajectories of the teacher's probability flow, two states of each kept.

    Each trajectory starts from a prior draw and runs ``N`` Euler steps of size
    ``1 / N`` with the target score (as the teacher was trained); only its states at
    steps ``start`` and ``start + gap`` are kept, so the memory does not grow with
    ``N``.

    Args:
        rng_key: key of the prior draws.
        teacher: the teacher's control network (not differentiated).
        schedule: the noise schedule it was trained with.
        score_fn: ``grad log rho`` of one state.
        start: the step index of the first state of each pair (``0 <= start``,
            ``start + gap <= N``), shape ``(num_trajectories,)`` for one pair per
            trajectory or ``(pairs, num_trajectories)`` for several.
        gap: fine steps between the two states.
        dim: dimension.
        num_steps: ``N``.
        clip: element-wise clip of the control's parts.
        prior_bound: truncation of the prior draws.

    Returns:
        The :class:`TeacherPairs`.
    """
    teacher = jax.lax.stop_gradient(teacher)
    scores_of = jax.vmap(score_fn)
    dt = 1.0 / num_steps

    def keep(kept, n, x, scores):
        first, first_score, second, second_score = kept
        at_first, at_second = (start == n)[..., None], (start + gap == n)[..., None]
        return (
            jnp.where(at_first, x, first),
            jnp.where(at_first, scores, first_score),
            jnp.where(at_second, x, second),
            jnp.where(at_second, scores, second_score),
        )

    def one_step(carry, n):
        x, kept = carry
        t = n * dt
        scores = scores_of(x)
        u = batched_control(teacher, schedule, x, t, dt, scores, clip)
        kept = keep(kept, n, x, scores)
        return (probability_flow_step(schedule, x, t, dt, u), kept), None

    x0 = sample_prior(rng_key, (start.shape[-1], dim), prior_bound)
    zeros = jnp.zeros((*start.shape, dim), x0.dtype)
    (final, kept), _ = jax.lax.scan(
        one_step, (x0, (zeros, zeros, zeros, zeros)), jnp.arange(num_steps)
    )
    kept = keep(kept, num_steps, final, jnp.zeros_like(final))
    return TeacherPairs(start, start + gap, *kept)


def consistency_function(
    network: ControlNetwork,
    schedule: AbstractSchedule,
    x: Float[Array, " dim"],
    score: Float[Array, " dim"],
    t: Float[Array, ""],
    clip: Float[Array, ""],
    score_weight: Float[Array, ""] | float = 1.0,
) -> Float[Array, " dim"]:
    """``f(x, t) = x + (1 - t) b(x, t, 1 - t)``: one flow step to ``t = 1``.

    ``f(x, 1) = x`` exactly (the step has length zero).

    Args:
        network: the student (or target) control network.
        schedule: the noise schedule.
        x: the state at time ``t``.
        score: ``grad log rho(x)`` (used with weight ``score_weight``).
        t: the time of ``x``.
        clip: element-wise clip of the control's parts.
        score_weight: a 0/1 switch of the target score in the control.
    """
    step = flow_step_fn(
        network, schedule, lambda _: score, t, 1.0 - t, clip, score_weight
    )
    return step(x)


def run_consistency(
    rng_key: PRNGKeyArray,
    network: ControlNetwork,
    schedule: AbstractSchedule,
    score_fn: Callable,
    x0: Float[Array, "num_samples dim"],
    num_steps: int,
    clip: Float[Array, ""],
    *,
    num_sde_steps: int,
    target_score_max_step: int | None,
    prior_bound: float | None = None,
    log_det: str = "exact",
) -> FlowDraws:
    r"""``num_steps`` consistency steps, re-noised in between, with exact weights.

    Step ``j`` (time ``t_j = j / k``) maps its start to the end, ``y_{j+1} =
    f(u_j, t_j)``; before every step but the first the last end point is noised
    back to ``t_j`` along the SDE's marginal, ``u_j = alpha_j y_j + s_j z_j``
    (:meth:`~numpyro_cds.sde.AbstractSchedule.noising_marginal`).  The density of
    the final draw is intractable, that of the chain of states is not: with the
    auxiliary backward kernel ``B_j(y_j | u_j) = N(y_j; alpha_j u_j, s_j^2 I)``
    (any normalised kernel keeps ``E[w] = Z``; this one is the exact reverse of the
    noising when the target is standard normal, the whitened target's scale, and
    then costs nothing), the importance weight of the draw is

    .. math::
        \log w = \log\rho(y_k) - \log q_0(x_0) + \sum_j \log|\det J_j|
        + \sum_{j \ge 1} \big[\log N(y_j; \alpha_j u_j, s_j^2 I)
        - \log N(u_j; \alpha_j y_j, s_j^2 I)\big],

    valid wherever every step map is invertible (a fold is flagged by the steps'
    determinant signs, as for the flow).  At ``k = 1`` it is the one-step flow.

    Args:
        rng_key: key of the re-noising (and of stochastic log-determinants).
        network: the consistency network.
        schedule: the noise schedule.
        score_fn: ``grad log rho`` of one state.
        x0: prior draws.
        num_steps: ``k``.
        clip: element-wise clip of the control's parts.
        num_sde_steps: the fine steps ``N`` of training.
        target_score_max_step: steps to the end longer than this many ``1 / N`` use
            the control without the target score (as in training); None: none.
        prior_bound: truncation of the prior; if given, also compute the log
            densities.
        log_det: ``"exact"`` or ``"stochastic"`` log-determinants.

    Returns:
        :class:`~numpyro_cds.flow.FlowDraws`.
    """
    with_density = prior_bound is not None
    noise_key, det_key = jax.random.split(rng_key)
    keys = log_det_keys(det_key, log_det, num_steps, x0.shape[0])
    max_step = num_sde_steps if target_score_max_step is None else target_score_max_step
    y, log_q, signs = x0, 0.0, []
    for j in range(num_steps):
        t = j / num_steps
        u = y
        if j > 0:
            alpha, s = schedule.noising_marginal(t)
            noise = jax.random.normal(jax.random.fold_in(noise_key, j), y.shape)
            u = alpha * y + s * noise
        with_score = j > 0 and num_sde_steps * (num_steps - j) <= max_step * num_steps
        step = flow_step_fn(
            network, schedule, score_fn if with_score else None, t, 1.0 - t, clip
        )
        y_next, det = step_with_log_det(
            step, u, keys[j], log_det if with_density else None
        )
        if with_density:
            log_q = log_q - det[0]
            signs.append(det[1])
            if j > 0:
                forward = jnp.sum((u - alpha * y) ** 2, -1)
                backward = jnp.sum((y - alpha * u) ** 2, -1)
                log_q = log_q + 0.5 * (backward - forward) / s**2
        y = y_next
    if not with_density:
        return FlowDraws(y)
    log_prior = jax.vmap(lambda x: truncated_normal_logdensity(x, prior_bound))(x0)
    return FlowDraws(y, log_prior + log_q, jnp.stack(signs))


def draw_consistency(
    rng_key: PRNGKeyArray,
    network: ControlNetwork,
    logdensity_fn: Callable,
    config: ConsistencyConfig,
    num_samples: int,
    num_steps: int,
    log_density: str | None = None,
    schedule: AbstractSchedule | None = None,
):
    """Draw with ``num_steps`` consistency steps of a CDDS network.

    As :func:`~numpyro_cds.consistency.draw_network` (same arguments, same prior
    draws), with :func:`run_consistency` in place of the flow; ``log_density`` is
    None, ``"exact"`` or ``"stochastic"``.
    """
    if log_density not in (None, "exact", "stochastic"):
        raise ValueError(
            "CDDS draws with consistency steps: log_density must be None, 'exact' or "
            f"'stochastic'; got {log_density!r}."
        )
    schedule = LinearSchedule() if schedule is None else schedule
    dim = network.output_layer.out_features
    bound = config.drawing_bound(dim)
    x0 = sample_prior(rng_key, (num_samples, dim), bound)
    draws = run_consistency(
        jax.random.fold_in(rng_key, 1),
        network,
        schedule,
        target_score_fn(logdensity_fn),
        x0,
        num_steps,
        config.clip(jnp.asarray(jnp.iinfo(jnp.int32).max)),
        num_sde_steps=config.num_sde_steps,
        target_score_max_step=config.target_score_max_step,
        prior_bound=None if log_density is None else bound,
        log_det=log_density or "exact",
    )
    return draws.x if log_density is None else draws


def distillation_loss(
    network: ControlNetwork,
    target_network: ControlNetwork,
    schedule: AbstractSchedule,
    pairs: TeacherPairs,
    clip: Float[Array, ""],
    *,
    num_steps: int,
    target_score_max_step: int | None,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The consistency-distillation loss on pairs of teacher states.

    The student maps ``x_n`` from ``t = n / N``, the target network (stop-gradient)
    ``x_{n + gap}`` from ``(n + gap) / N``.

    Args:
        network: the student, differentiated.
        target_network: the target network (the student's EMA).
        schedule: the noise schedule.
        pairs: states of teacher trajectories (:func:`teacher_pairs`).
        clip: element-wise clip of the control's parts.
        num_steps: ``N``, the teacher's fine steps.
        target_score_max_step: a step to the end longer than this many ``1 / N``
            uses a control without the target score (as the draws do: see
            :class:`~numpyro_cds.consistency.ConsistencyConfig`); None: every one
            uses it.

    Returns:
        ``(loss, kept_fraction)``: the mean squared difference of the end points
        over the pairs where both are finite, divided by ``dim``; and that fraction.
    """
    dim = pairs.first.shape[-1]
    max_step = num_steps if target_score_max_step is None else target_score_max_step

    def end_points(net, index, x, score):
        t = index / num_steps
        weight = (num_steps - index <= max_step).astype(x.dtype)
        return jax.vmap(
            lambda x, s, t, w: consistency_function(net, schedule, x, s, t, clip, w)
        )(x, score, t, weight)

    prediction = end_points(network, pairs.start, pairs.first, pairs.first_score)
    goal = jax.lax.stop_gradient(
        end_points(target_network, pairs.end, pairs.second, pairs.second_score)
    )
    squared = jnp.sum((prediction - goal) ** 2, axis=-1)
    finite = jnp.isfinite(squared)
    kept = jnp.mean(finite.astype(squared.dtype))
    loss = jnp.sum(jnp.where(finite, squared, 0.0)) / jnp.maximum(finite.sum(), 1)
    return loss / dim, kept


def distillation_sampler(
    logdensity_fn: Callable,
    teacher: ControlNetwork,
    config: ConsistencyConfig,
    optimizer: optax.GradientTransformation,
    schedule: AbstractSchedule | None = None,
    *,
    gap: int | None = None,
) -> SamplerAlgorithm:
    """Build the CDDS ``init``, ``step`` and ``sample`` functions for one teacher.

    Args:
        logdensity_fn: log density of one flat (whitened) vector: the teacher's.
        teacher: the trained teacher's control network (its EMA weights).
        config: the sampler's settings (``num_sde_steps`` the teacher's fine steps,
            ``batch_size`` trajectories per iteration, clips, prior bounds,
            ``ema_decay`` of the target network, ``target_score_max_step``).
        optimizer: the optax transformation of the student's updates.
        schedule: the teacher's noise schedule (:class:`~numpyro_cds.sde.
            LinearSchedule` by default).
        gap: fine teacher steps between the two states of a pair; a power of two
            dividing ``num_sde_steps``.  None: 4, or ``num_sde_steps`` if fewer.

    Returns:
        ``init(rng_key) -> (state, static)`` (the student starts as the teacher);
        ``step(rng_key, state, static) -> (state, DistillationInfo)``;
        ``sample`` draws with :func:`draw_consistency` (the one-step draw is
        ``f(x_0, 0)``).

    Raises:
        ValueError: ``gap`` does not divide ``num_sde_steps``.
    """
    num_steps = config.num_sde_steps
    gap = min(4, num_steps) if gap is None else gap
    if not (isinstance(gap, int) and gap >= 1 and num_steps % gap == 0):
        raise ValueError(
            f"gap must be a positive divisor of num_sde_steps={num_steps}; got {gap!r}."
        )
    schedule = LinearSchedule() if schedule is None else schedule
    score_fn = target_score_fn(logdensity_fn)
    dim = teacher.output_layer.out_features
    teacher = jax.lax.stop_gradient(teacher)

    def init(rng_key):
        params, static = eqx.partition(teacher, eqx.is_inexact_array)
        zero = jnp.zeros((), jnp.int32)
        return SCDSState(params, params, optimizer.init(params), zero), static

    def step(rng_key, state, static):
        paths_key, pairs_key = jax.random.split(rng_key)
        clip = config.clip(state.iteration)
        # batch_size pairs, pairs_per_path from each of fewer trajectories.
        per_path = config.pairs_per_path
        shape = (per_path, -(-config.batch_size // per_path))
        start = gap * jax.random.randint(pairs_key, shape, 0, num_steps // gap)
        pairs = teacher_pairs(
            paths_key,
            teacher,
            schedule,
            score_fn,
            start,
            gap=gap,
            dim=dim,
            num_steps=num_steps,
            clip=clip,
            prior_bound=config.training_bound(dim),
        )
        pairs = jax.tree.map(
            lambda a: a.reshape(-1, *a.shape[2:])[: config.batch_size], pairs
        )
        target = eqx.combine(state.ema_params, static)

        def objective(params):
            return distillation_loss(
                eqx.combine(params, static),
                target,
                schedule,
                pairs,
                clip,
                num_steps=num_steps,
                target_score_max_step=config.target_score_max_step,
            )

        (loss, kept), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = eqx.apply_updates(state.params, updates)
        ema_params = ema_update(config, state.iteration, state.ema_params, params)
        new_state = SCDSState(params, ema_params, opt_state, state.iteration + 1)
        return new_state, DistillationInfo(loss, kept)

    sample = network_sampler(logdensity_fn, config, schedule, draw_consistency)
    return SamplerAlgorithm(init, step, sample, loss_name="distillation_loss")
