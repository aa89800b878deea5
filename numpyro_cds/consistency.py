"""Self-consistent diffusion sampler (SCDS): training step and k-step sampling.

One step-size-conditioned control is trained from scratch with two losses per
iteration (Jutras-Dube et al. 2025, "Single-Step Consistent Diffusion Samplers"):

1. the log-variance loss of the diffusion sampler on Euler-Maruyama paths simulated
   with step size ``1 / N`` (:func:`numpyro_cds.diffusion.log_variance_loss`);
2. the self-consistency loss: from a state on those paths, one probability-flow Euler
   step of size ``d`` must land where two steps of size ``d / 2`` of an EMA teacher
   land, for ``d`` in ``{2, 4, ..., N} / N`` and times that are multiples of ``d``;
   optionally (``volume_weight > 0``, OSDS's volume consistency) the big step's
   log-volume change must also match the sum of the two half steps'.

Each loss takes its own optimiser update (the two share one optimiser state), then the
EMA weights are updated.  Samples come from ``k`` probability-flow Euler steps with the
EMA weights, ``k`` in ``{1, 2, 4, ..., N}``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from .diffusion import (
    DetachedDynamics,
    batched_control,
    detached_log_variance,
    log_variance_loss,
    sample_prior,
    simulate_paths,
    target_score_fn,
)
from .flow import exact_log_abs_det, flow_step_fn, run_flow
from .networks import ControlNetwork
from .path_weights import run_sde
from .sde import AbstractSchedule, LinearSchedule, euler_maruyama_step

__all__ = [
    "ConsistencyConfig",
    "default_prior_bound",
    "SCDSState",
    "SCDSInfo",
    "SamplerAlgorithm",
    "ema_update",
    "PathStarts",
    "draw_start_steps",
    "path_starts",
    "self_consistency_loss",
    "consistency_sampler",
    "draw_network",
    "network_sampler",
]


def _is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and n & (n - 1) == 0


#: Prior mass left out, in all dimensions together, by the default truncation.
PRIOR_MASS_LEFT_OUT = 1e-3


def default_prior_bound(dim: int) -> float:
    """Element-wise bound that leaves out :data:`PRIOR_MASS_LEFT_OUT` of ``N(0, I)``.

    ``P(|z_i| > b) = 1e-3 / dim`` per coordinate: 3.89 in 10 dimensions (the SCDS
    reference's bound), 4.98 in 1600.

    Example:
        >>> round(default_prior_bound(10), 2), round(default_prior_bound(1600), 2)
        (3.89, 4.98)
    """
    from scipy.special import ndtri

    return float(-ndtri(0.5 * PRIOR_MASS_LEFT_OUT / dim))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsistencyConfig:
    """Hyperparameters of the SCDS sampler and its losses.

    Attributes:
        num_sde_steps: ``N``, Euler-Maruyama steps of the training paths (power of 2).
        batch_size: paths per training iteration.
        width: hidden width of the control network.
        depth: hidden layers of the control network.
        state_scale: the network's output adds a learned multiple of the state,
            ``s(x, t, d) * x`` (:class:`~numpyro_cds.networks.ControlNetwork`), so
            that it can rescale coordinates by functions of the others, as the
            funnel's ``x_i | x0 ~ N(0, exp(x0))`` needs.  Off by default: it widened
            the 10-D funnel's one-step ``x0`` quantiles without reaching the neck,
            helped eight schools, and cut the GMM grid's one-step ESS from 0.17 to
            0.007 (``BENCHMARKS.md``, tenth session).
        consistency_weight: weight of the self-consistency loss; with
            ``volume_weight`` also 0 the sampler is DIS (the diffusion loss alone,
            one update per iteration).
        volume_weight: weight of the volume-consistency loss (see
            :func:`self_consistency_loss`); 0 leaves it out.  It costs ``dim``
            forward-mode passes per probability-flow step, like the exact importance
            weights.
        initial_clip: element-wise clip of control terms at the start of training.
        clip_growth: factor applied to the clip at each of ``clip_milestones``.
        clip_milestones: iterations at which the clip grows.  Empty by default: the
            clip stays at ``initial_clip``.  The SCDS reference grows it 10 -> 50 ->
            250 (milestones ``(200, 400)``); with a clip of 250 one probability-flow
            step can move a draw hundreds of (whitened) units, and on the 10-D
            funnel 1 % of the one-step draws landed at ``x0 < -29`` (``docs/
            design.rst``, "The defaults, and why").
        ema_decay: cap of the EMA decay ``min(ema_decay, 1 - (1 + it) ** -0.9)``.
        prior_bound: element-wise truncation ``+-bound`` of the ``N(0, I)`` prior
            draws of the training paths.  None: :func:`default_prior_bound` of the
            dimension, which leaves out ``1e-3`` of the prior's mass in all.
        sampling_prior_bound: truncation of the prior when drawing; None: the
            training paths' bound.  Draws from beyond the trained box land where
            the network never learned (a draw at 6 sd can be thrown orders of
            magnitude away); the importance weights and ``log Z`` miss the target
            mass outside the image of the box (about ``1e-3`` at the default).
        max_rnd: paths with a log RND above this are left out of the loss.
        target_score_max_step: the largest step, in training steps ``1 / N``, whose
            control sees the target score; larger steps (in the self-consistency
            loss and when drawing with fewer than ``N / target_score_max_step``
            steps) use the prior score alone.  An Euler step with the target score
            inside folds space where the step size times the target's curvature
            exceeds about one, and its weights then overstate ``Z``; without it a
            step starts as the identity and the network learns the rest, and drawing
            needs no target gradient.  None: every step sees it (the paper).
        teacher: the half steps of the self-consistency loss are taken with the
            ``"ema"`` weights (OSDS) or the ``"current"`` weights, stop-gradient
            (the SCDS reference code).
        ema_start: iteration before which the EMA just copies the weights (the
            reference code's EMA averages only the last part of training).
        consistency_space: ``"state"`` compares the end states of the big step and
            the two half steps (the paper: step ``d`` weighted by ``d**2``, so the
            smallest steps get ``(2 / N)**2`` of the signal); ``"velocity"`` divides
            by ``d**2``, weighting every step size alike.
        save_memory: keep nothing per SDE step, so that a training iteration's
            memory does not grow with ``num_sde_steps``: the paths are simulated
            twice, once for their log-variance and the self-consistency loss's start
            states, once more accumulating the gradient step by step
            (:func:`~numpyro_cds.diffusion.detached_log_variance`).  SCDS and DIS:
            the same loss and gradient (up to float rounding), for the cost of a
            second simulation (target gradients included).  PIS and DDS, whose
            default gradient is pathwise (through the SDE), take instead the
            likelihood-ratio estimate of the same KL gradient on detached paths
            (:mod:`numpyro_cds.reference`): another estimator, so other parameters.
            ``BENCHMARKS.md`` ("Scaling") has the costs.
        pairs_per_path: CDDS takes this many pairs of states from each teacher
            trajectory, simulating ``batch_size / pairs_per_path`` trajectories per
            iteration (rounded up).  Simulating the teacher is most
            of a distillation iteration's cost; on eight schools 4 pairs per path
            halved the student's training time for the same draws (ESS 0.948
            against 0.951 with 1, one seed; 16 gave 0.933: ``BENCHMARKS.md``,
            eighth session).
    """

    num_sde_steps: int = 64
    batch_size: int = 256
    width: int = 64
    depth: int = 2
    state_scale: bool = False
    consistency_weight: float = 1.0
    volume_weight: float = 0.0
    initial_clip: float = 10.0
    clip_growth: float = 5.0
    clip_milestones: tuple[int, ...] = ()
    ema_decay: float = 0.99
    prior_bound: float | None = None
    sampling_prior_bound: float | None = None
    max_rnd: float = 1e8
    target_score_max_step: int | None = 1
    teacher: str = "ema"
    ema_start: int = 0
    consistency_space: str = "state"
    save_memory: bool = False
    pairs_per_path: int = 4

    def __post_init__(self):
        if not _is_power_of_two(self.num_sde_steps) or self.num_sde_steps < 2:
            raise ValueError(
                f"num_sde_steps must be a power of two >= 2 (e.g. 64), got "
                f"{self.num_sde_steps!r}."
            )
        for name in ("batch_size", "width", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (the loss is a variance).")
        for name in ("initial_clip", "clip_growth", "max_rnd"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("prior_bound", "sampling_prior_bound"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(
                    f"{name} must be positive or None (automatic), got {value}."
                )
        for name in ("consistency_weight", "volume_weight"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(
                    f"{name} must be non-negative (0 leaves the term out), got "
                    f"{getattr(self, name)}."
                )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}.")
        step = self.target_score_max_step
        if step is not None and not _is_power_of_two(step):
            raise ValueError(
                "target_score_max_step must be None or a power of two (1, 2, 4, ...),"
                f" in training steps; got {step!r}."
            )
        if self.teacher not in ("ema", "current"):
            raise ValueError(
                f"teacher must be 'ema' or 'current', got {self.teacher!r}."
            )
        if self.consistency_space not in ("state", "velocity"):
            raise ValueError(
                "consistency_space must be 'state' or 'velocity', got "
                f"{self.consistency_space!r}."
            )
        if isinstance(self.ema_start, bool) or not isinstance(self.ema_start, int):
            raise ValueError(f"ema_start must be an int, got {self.ema_start!r}.")
        per_path = self.pairs_per_path
        if isinstance(per_path, bool) or not isinstance(per_path, int) or per_path < 1:
            raise ValueError(
                f"pairs_per_path must be a positive integer, got {per_path!r}."
            )
        for name in ("save_memory", "state_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}.")

    def training_bound(self, dim: int) -> float:
        """Truncation of the training paths' prior draws in ``dim`` dimensions."""
        return (
            default_prior_bound(dim) if self.prior_bound is None else self.prior_bound
        )

    def drawing_bound(self, dim: int) -> float:
        """Truncation of the prior when drawing in ``dim`` dimensions."""
        if self.sampling_prior_bound is None:
            return self.training_bound(dim)
        return self.sampling_prior_bound

    def uses_target_score(self, num_steps: int) -> bool:
        """Whether drawing with ``num_steps`` equal steps evaluates the target score."""
        step = self.target_score_max_step
        return step is None or self.num_sde_steps <= step * num_steps

    def clip(self, iteration: Array) -> Array:
        """Element-wise clip in force at ``iteration``."""
        passed = sum((iteration >= m).astype(jnp.float32) for m in self.clip_milestones)
        return self.initial_clip * self.clip_growth**passed


class SCDSState(NamedTuple):
    """Training state: trainable arrays, their EMA, optimiser state, iteration."""

    params: eqx.Module
    ema_params: eqx.Module
    opt_state: optax.OptState
    iteration: Array


class SCDSInfo(NamedTuple):
    """Per-iteration diagnostics.

    Attributes:
        diffusion_loss: the log-variance loss.
        consistency_loss: the self-consistency loss of the states (NaN for DIS).
        volume_loss: the volume-consistency loss; NaN when ``volume_weight`` is 0
            (not computed).
        kept_fraction: fraction of paths that entered the log-variance loss.
    """

    diffusion_loss: Array
    consistency_loss: Array
    volume_loss: Array
    kept_fraction: Array


class SamplerAlgorithm(NamedTuple):
    """``init``, ``step`` and ``sample`` functions of a trainable sampler.

    ``loss_name`` is the field of ``step``'s info that the progress bar shows and the
    training monitor watches for divergence.
    """

    init: Callable
    step: Callable
    sample: Callable
    loss_name: str = "diffusion_loss"


def ema_update(config: ConsistencyConfig, iteration: Array, ema_params, params):
    """The EMA weights after ``iteration``'s update.

    The decay is ``min(ema_decay, 1 - (1 + i) ** -0.9)`` with ``i`` the iterations
    since ``config.ema_start``; before it the EMA copies the weights.
    """
    averaged = iteration - config.ema_start
    decay = jnp.where(
        averaged < 0,
        0.0,
        jnp.minimum(config.ema_decay, 1.0 - (1.0 + averaged) ** -0.9),
    ).astype(jnp.float32)
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


class PathStarts(NamedTuple):
    """Where each path's self-consistency step starts, and how big it is.

    Attributes:
        index: the training step ``n`` it starts at, shape ``(batch,)``.
        big: the big step in training steps ``1 / N``, a power of two in ``2..N``.
        states: the path's state ``X_n`` there, shape ``(batch, dim)``.
        scores: ``grad log rho(X_n)``, same shape.
    """

    index: Array
    big: Array
    states: Array
    scores: Array


def draw_start_steps(
    rng_key: PRNGKeyArray, num_steps: int, batch: int
) -> tuple[Array, Array]:
    """Per path, a big step ``2**j`` (``j`` uniform in ``1..log2 N``) and a start.

    The start is a multiple of the big step, so that the step ends by ``t = 1``.

    Returns:
        ``(index, big)``, both of shape ``(batch,)``, in training steps.
    """
    power_key, start_key = jax.random.split(rng_key)
    big = 2 ** jax.random.randint(power_key, (batch,), 1, int(math.log2(num_steps)) + 1)
    start = jnp.floor(jax.random.uniform(start_key, (batch,)) * (num_steps // big))
    return start.astype(jnp.int32) * big, big


def path_starts(
    rng_key: PRNGKeyArray,
    states: Float[Array, "num_steps batch dim"],
    target_scores: Float[Array, "num_steps batch dim"],
) -> PathStarts:
    """:func:`draw_start_steps`, and the paths' states and target scores there."""
    num_steps, batch, _ = states.shape
    index, big = draw_start_steps(rng_key, num_steps, batch)
    rows = jnp.arange(batch)
    return PathStarts(index, big, states[index, rows], target_scores[index, rows])


def self_consistency_loss(
    network: ControlNetwork,
    teacher: ControlNetwork,
    schedule: AbstractSchedule,
    score_fn: Callable,
    starts: PathStarts,
    num_steps: int,
    clip: Float[Array, ""],
    *,
    volume: bool = False,
    target_score_max_step: int | None = None,
    velocity: bool = False,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """One big probability-flow step against two half steps of the teacher.

    Each path's big step ``2**j / N`` starts at a state of the path at a multiple of
    that step (:func:`path_starts`).

    With ``volume``, the big step's log-volume change must also match the sum of the
    teacher's two (OSDS's volume consistency).  A step's log-volume change is the
    exact ``log |det J|`` of the Euler map ``x -> x + dt b(x)``, computed by
    :func:`~numpyro_cds.flow.exact_log_abs_det` of
    :func:`~numpyro_cds.flow.flow_step_fn`: the very quantity that the k-step flow's
    importance weights use, with the Jacobian of the actual drift, including the
    target's Hessian that enters through the control's Langevin input (OSDS stops
    that gradient and so matches the divergence of another drift).  It is exact rather
    than OSDS's first-order ``dt tr(db/dx)``, because the first-order term is blind to
    the discretisation error that the few-step weights pay for: for a linear drift
    ``b = a x`` one step of size ``d`` and two of size ``d / 2`` have the same
    first-order increment ``d a dim``, while their log-volume changes
    ``dim log|1 + d a|`` and ``2 dim log|1 + d a / 2|`` differ.  It costs ``dim``
    forward-mode passes per step, as the weights do.

    Args:
        network: the student, trained.
        teacher: the teacher (EMA weights), not differentiated.
        schedule: the noise schedule.
        score_fn: ``grad log rho`` of one state.
        starts: the steps' starts on the training paths.
        num_steps: ``N``, the training paths' steps.
        clip: element-wise clip of the control's parts.
        volume: also compute the volume-consistency loss.
        target_score_max_step: steps larger than this many ``1 / N`` use controls
            without the target score (:class:`ConsistencyConfig`); None: none.
        velocity: divide each squared state error by ``d**2`` (``consistency_space``
            ``"velocity"`` of :class:`ConsistencyConfig`).

    Returns:
        ``(state_loss, volume_loss)``: ``mean((x_teacher - x_student)**2) / dim`` and
        ``mean((log_volume_teacher - log_volume_student)**2) / dim**2`` (NaN without
        ``volume``).
    """
    x, score, big = starts.states, starts.scores, starts.big
    dim = x.shape[-1]
    t = starts.index / num_steps
    d = big / num_steps
    half = 0.5 * d
    max_step = num_steps if target_score_max_step is None else target_score_max_step
    # 0/1 switches of the target score in the teacher's half steps and the big step.
    half_weight = (big // 2 <= max_step).astype(x.dtype)
    big_weight = (big <= max_step).astype(x.dtype)

    def step(network, x, score, t, dt, weight):
        # The new state reuses the score at x; the log-determinant differentiates the
        # step as a function of x, score included.
        x_next = flow_step_fn(network, schedule, lambda _: score, t, dt, clip, weight)(
            x
        )
        if not volume:
            return x_next, jnp.nan
        as_function = flow_step_fn(network, schedule, score_fn, t, dt, clip, weight)
        return x_next, exact_log_abs_det(as_function, x)[0]

    def teacher_steps(x, score, t, half, weight):
        mid, first = step(teacher, x, score, t, half, weight)
        goal, second = step(teacher, mid, score_fn(mid), t + half, half, weight)
        return goal, first + second

    goal, goal_volume = jax.lax.stop_gradient(
        jax.vmap(teacher_steps)(x, score, t, half, half_weight)
    )
    prediction, prediction_volume = jax.vmap(lambda *a: step(network, *a))(
        x, score, t, d, big_weight
    )
    squared = (goal - prediction) ** 2
    if velocity:
        squared = squared / d[:, None] ** 2
    state_loss = jnp.mean(squared) / dim
    return state_loss, jnp.mean((goal_volume - prediction_volume) ** 2) / dim**2


def draw_network(
    rng_key: PRNGKeyArray,
    network: ControlNetwork,
    logdensity_fn: Callable,
    config: ConsistencyConfig,
    num_samples: int,
    num_steps: int,
    log_density: str | None = None,
    schedule: AbstractSchedule | None = None,
):
    """Draw with ``num_steps`` steps of a trained control network.

    Args:
        rng_key: PRNG key.
        network: the control network (e.g. the EMA weights).
        logdensity_fn: log density of one flat (whitened) vector; its gradient is
            evaluated only where :meth:`ConsistencyConfig.uses_target_score` says.
        config: the sampler's settings (prior bound, clips, score gating).
        num_samples: number of draws.
        num_steps: steps per draw, a power of two.
        log_density: None (draws only), ``"exact"`` or ``"stochastic"`` (the k-step
            flow's log density with that kind of log-determinant: a
            :class:`~numpyro_cds.flow.FlowDraws`), or ``"path"`` (``num_steps``
            Euler-Maruyama steps with each path's log density ratio: a
            :class:`~numpyro_cds.path_weights.PathDraws`).
        schedule: the noise schedule the network was trained with
            (:class:`~numpyro_cds.sde.LinearSchedule` by default).

    Returns:
        An array of shape ``(num_samples, dim)`` without ``log_density``, else the
        draws with their log densities.
    """
    if not _is_power_of_two(num_steps):
        raise ValueError(
            f"num_steps must be a power of two (1, 2, 4, ...), got {num_steps!r}."
        )
    if log_density not in (None, "exact", "stochastic", "path"):
        raise ValueError(
            "log_density must be None, 'exact', 'stochastic' or 'path'; got "
            f"{log_density!r}."
        )
    schedule = LinearSchedule() if schedule is None else schedule
    dim = network.output_layer.out_features
    clip = config.clip(jnp.asarray(jnp.iinfo(jnp.int32).max))
    bound = config.drawing_bound(dim)
    x0 = sample_prior(rng_key, (num_samples, dim), bound)
    common = (network, schedule, target_score_fn(logdensity_fn), x0, num_steps, clip)
    with_score = config.uses_target_score(num_steps)
    if log_density is None:
        return run_flow(*common, use_target_score=with_score).x
    key = jax.random.fold_in(rng_key, 1)
    if log_density == "path":
        return run_sde(key, *common, bound, use_target_score=with_score)
    return run_flow(
        *common,
        bound,
        log_det=log_density,
        rng_key=key,
        use_target_score=with_score,
    )


def network_sampler(
    logdensity_fn: Callable,
    config: ConsistencyConfig,
    schedule: AbstractSchedule,
    draw: Callable | None = None,
) -> Callable:
    """The ``sample`` function of a :class:`SamplerAlgorithm` for one target.

    ``sample(rng_key, params, static, num_samples, num_steps, log_density=None)`` is
    ``draw`` (:func:`draw_network` by default; CDDS passes its consistency steps)
    with the network ``eqx.combine(params, static)``.
    """
    draw = draw_network if draw is None else draw

    def sample(rng_key, params, static, num_samples, num_steps, log_density=None):
        return draw(
            rng_key,
            eqx.combine(params, static),
            logdensity_fn,
            config,
            num_samples,
            num_steps,
            log_density,
            schedule,
        )

    return sample


def consistency_sampler(
    logdensity_fn: Callable,
    dim: int,
    config: ConsistencyConfig,
    optimizer: optax.GradientTransformation,
    schedule: AbstractSchedule | None = None,
) -> SamplerAlgorithm:
    """Build the SCDS ``init``, ``step`` and ``sample`` functions for one target.

    Args:
        logdensity_fn: log density of one flat (whitened) vector, up to a constant.
        dim: dimension of that vector.
        config: sampler hyperparameters.
        optimizer: the optax transformation used for both updates of an iteration.
        schedule: noise schedule, :class:`~numpyro_cds.sde.LinearSchedule` by default.

    Returns:
        ``init(rng_key) -> (state, static)``; ``step(rng_key, state, static) ->
        (state, info)``; ``sample(rng_key, params, static, num_samples, num_steps,
        log_density=None)`` returning an array of shape ``(num_samples, dim)``, or
        with ``log_density="exact"`` or ``"stochastic"`` a
        :class:`~numpyro_cds.flow.FlowDraws` that also holds each draw's log density
        under the k-step flow (with that kind of log-determinant), or with
        ``log_density="path"`` a :class:`~numpyro_cds.path_weights.PathDraws` of
        ``num_steps`` Euler-Maruyama steps of the SDE instead, with each path's log
        density ratio (:func:`~numpyro_cds.path_weights.run_sde`).

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, optax
        >>> logdensity = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)
        >>> config = ConsistencyConfig(num_sde_steps=4, batch_size=8, width=8)
        >>> algo = consistency_sampler(logdensity, 2, config, optax.adam(1e-3))
        >>> state, static = algo.init(jax.random.key(0))
        >>> step = eqx.filter_jit(algo.step)  # compiled once, as fit's chunks are
        >>> state, info = step(jax.random.key(1), state, static)
        >>> algo.sample(jax.random.key(2), state.ema_params, static, 5, 1).shape
        (5, 2)
    """
    schedule = LinearSchedule() if schedule is None else schedule
    score_fn = target_score_fn(logdensity_fn)

    def init(rng_key):
        network = ControlNetwork(
            dim,
            width=config.width,
            depth=config.depth,
            state_scale=config.state_scale,
            key=rng_key,
        )
        params, static = eqx.partition(network, eqx.is_inexact_array)
        state = SCDSState(
            params=params,
            ema_params=params,
            opt_state=optimizer.init(params),
            iteration=jnp.zeros((), jnp.int32),
        )
        return state, static

    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), opt_state

    def diffusion_gradient(paths_key, start_key, params, static, clip):
        """The log-variance loss, its gradient, and the self-consistency starts."""
        steps, batch = config.num_sde_steps, config.batch_size
        bound = config.training_bound(dim)
        if config.save_memory:
            dynamics = DetachedDynamics(
                control=lambda p, x, t, dt, scores: batched_control(
                    eqx.combine(p, static), schedule, x, t, dt, scores, clip
                ),
                advance=lambda x, t, dt, u, noise: euler_maruyama_step(
                    schedule, x, t, dt, u, noise
                ),
            )
            index, big = draw_start_steps(start_key, steps, batch)
            loss, grads, paths = detached_log_variance(
                paths_key,
                params,
                dynamics,
                logdensity_fn,
                batch_size=batch,
                dim=dim,
                num_steps=steps,
                prior_bound=bound,
                max_rnd=config.max_rnd,
                capture_steps=index,
            )
            starts = PathStarts(
                index, big, paths.captured_states, paths.captured_scores
            )
            return loss, grads, starts
        paths = simulate_paths(
            paths_key,
            eqx.combine(params, static),
            schedule,
            logdensity_fn,
            batch_size=batch,
            dim=dim,
            num_steps=steps,
            clip=clip,
            prior_bound=bound,
        )
        loss, grads = jax.value_and_grad(
            lambda p: log_variance_loss(
                eqx.combine(p, static),
                schedule,
                paths,
                clip=clip,
                max_rnd=config.max_rnd,
            ),
            has_aux=True,
        )(params)
        return loss, grads, path_starts(start_key, paths.states, paths.target_scores)

    def step(rng_key, state, static):
        paths_key, consistency_key = jax.random.split(rng_key)
        clip = config.clip(state.iteration)
        (diffusion_loss, kept), grads, starts = diffusion_gradient(
            paths_key, consistency_key, state.params, static, clip
        )
        params, opt_state = update(state.params, state.opt_state, grads)
        if config.consistency_weight == 0 and config.volume_weight == 0:  # DIS
            ema_params = ema_update(config, state.iteration, state.ema_params, params)
            new_state = SCDSState(params, ema_params, opt_state, state.iteration + 1)
            nan = jnp.full((), jnp.nan, diffusion_loss.dtype)
            return new_state, SCDSInfo(diffusion_loss, nan, nan, kept)
        teacher_params = state.ema_params if config.teacher == "ema" else params
        teacher = eqx.combine(teacher_params, static)

        volume = config.volume_weight > 0

        def consistency_objective(params):
            state_loss, volume_loss = self_consistency_loss(
                eqx.combine(params, static),
                teacher,
                schedule,
                score_fn,
                starts,
                config.num_sde_steps,
                clip,
                volume=volume,
                target_score_max_step=config.target_score_max_step,
                velocity=config.consistency_space == "velocity",
            )
            objective = config.consistency_weight * state_loss
            if volume:
                objective = objective + config.volume_weight * volume_loss
            return objective, (state_loss, volume_loss)

        (_, (consistency_loss, volume_loss)), grads = jax.value_and_grad(
            consistency_objective, has_aux=True
        )(params)
        params, opt_state = update(params, opt_state, grads)
        ema_params = ema_update(config, state.iteration, state.ema_params, params)
        new_state = SCDSState(params, ema_params, opt_state, state.iteration + 1)
        info = SCDSInfo(diffusion_loss, consistency_loss, volume_loss, kept)
        return new_state, info

    return SamplerAlgorithm(
        init, step, network_sampler(logdensity_fn, config, schedule)
    )
