"""MALA: a one-chain kernel, and vectorised moves for the resample-move correction.

:func:`mala_init` and :func:`mala_step` are a BlackJAX-shaped kernel: one unbatched
chain with an explicit :class:`MALAState`, the step size and preconditioner passed in,
so that ``vmap`` gives per-chain step sizes.  :func:`mala_move` runs many of them.

After importance resampling has fixed the relative mass of the modes, every draw is
moved by a short Metropolis-adjusted Langevin chain that leaves the target invariant,
which removes the remaining local bias.  The chains run side by side (``vmap``) with
one diagonal preconditioner, the population's standard deviation per coordinate.
Each chain adapts its own step size during the first phase (a draw in the narrow
neck of a funnel needs a far smaller step than one in its mouth); afterwards the
step sizes are fixed.  Every proposal also scales its chain's step size by a random
factor drawn independently of the state, so that chains can still move where the
local scale is far smaller than their step; such a state-independent mixture of MALA
kernels leaves the target invariant as each of them does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = [
    "MALAState",
    "MALAStepInfo",
    "MALAInfo",
    "mala_init",
    "mala_step",
    "mala_move",
]


class MALAState(NamedTuple):
    """State of one MALA chain (BlackJAX's shape).

    Attributes:
        position: the current position.
        logdensity: the log density there (``-inf`` where it is not finite).
        logdensity_grad: its gradient (zero where either is not finite).
    """

    position: Float[Array, " dim"]
    logdensity: Float[Array, ""]
    logdensity_grad: Float[Array, " dim"]


class MALAStepInfo(NamedTuple):
    """What one MALA step did.

    Attributes:
        acceptance_rate: the Metropolis-Hastings acceptance probability.
        is_accepted: whether the proposal was accepted.
    """

    acceptance_rate: Float[Array, ""]
    is_accepted: Array


class MALAInfo(NamedTuple):
    """Statistics of a MALA move.

    Attributes:
        acceptance_rate: mean acceptance rate of the moves after adaptation.
        step_size: the chains' adapted step sizes (in units of the population's
            sd), before the random factor.
        gradient_evaluations: target-gradient evaluations in all (every chain).
    """

    acceptance_rate: Array
    step_size: Array
    gradient_evaluations: int


def _safe_value_and_grad(logdensity_fn, x):
    value, grad = jax.value_and_grad(logdensity_fn)(x)
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
    return jnp.where(finite, value, -jnp.inf), jnp.where(finite, grad, 0.0)


def mala_init(position: Float[Array, " dim"], logdensity_fn: Callable) -> MALAState:
    """The state of a chain at ``position``."""
    return MALAState(position, *_safe_value_and_grad(logdensity_fn, position))


def mala_step(
    rng_key: PRNGKeyArray,
    state: MALAState,
    logdensity_fn: Callable,
    step_size: Float[Array, ""],
    scale: Float[Array, " dim"],
) -> tuple[MALAState, MALAStepInfo]:
    """One preconditioned MALA step of one chain (``vmap`` it for many chains).

    Proposal ``x' = x + h^2 / 2 S^2 grad log p(x) + h S xi`` with ``h = step_size``
    and ``S = diag(scale)``, accepted with the Metropolis-Hastings probability.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logdensity = lambda x: -0.5 * x @ x
        >>> state = mala_init(jnp.ones(2), logdensity)
        >>> state, info = mala_step(jax.random.key(0), state, logdensity, 0.5,
        ...                         jnp.ones(2))
        >>> state.position.shape, bool(0 <= info.acceptance_rate <= 1)
        ((2,), True)
    """
    noise_key, accept_key = jax.random.split(rng_key)

    def log_proposal(to, frm, grad_frm):
        mean = frm + 0.5 * step_size**2 * scale**2 * grad_frm
        return -0.5 * jnp.sum(((to - mean) / (step_size * scale)) ** 2)

    x, grad = state.position, state.logdensity_grad
    noise = jax.random.normal(noise_key, x.shape, x.dtype)
    proposal = x + 0.5 * step_size**2 * scale**2 * grad + step_size * scale * noise
    new = mala_init(proposal, logdensity_fn)
    log_ratio = (
        new.logdensity
        - state.logdensity
        + log_proposal(x, proposal, new.logdensity_grad)
        - log_proposal(proposal, x, grad)
    )
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    acceptance_rate = jnp.exp(jnp.minimum(log_ratio, 0.0))
    accept = jax.random.uniform(accept_key) < acceptance_rate
    state = jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, state)
    return state, MALAStepInfo(acceptance_rate, accept)


def mala_move(
    rng_key: PRNGKeyArray,
    logdensity_fn: Callable,
    positions: Float[Array, "num_chains dim"],
    num_adapt: int = 50,
    num_steps: int = 50,
    target_acceptance: float = 0.574,
    min_scale: float = 1e-2,
    step_size_jitter: float = 3.0,
) -> tuple[Float[Array, "num_chains dim"], MALAInfo]:
    """Move each position by ``num_adapt + num_steps`` preconditioned MALA steps.

    Proposal: ``x' = x + h^2 / 2 S^2 grad log p(x) + h S xi`` with ``S`` the population
    sd per coordinate and ``h = h_i exp(-step_size_jitter U)``, ``U ~ U(0, 1)`` drawn
    afresh for every chain and step; accepted with the Metropolis-Hastings
    probability.  During the first ``num_adapt`` steps each chain's ``log h_i``
    follows the Robbins-Monro update ``log h_i += (a_i - target) / (j + 1)^0.6``
    with ``a_i`` its acceptance probability at step ``j``; afterwards ``h_i`` is
    fixed.

    Args:
        rng_key: PRNG key.
        logdensity_fn: log density of one position (up to a constant).
        positions: starting points, one chain each.
        num_adapt: steps that adapt the step sizes.
        num_steps: steps with the adapted, fixed step sizes.
        target_acceptance: acceptance rate the adaptation aims for (0.574 is
            optimal for MALA).
        min_scale: floor of the preconditioner (a resampled population can repeat
            draws, so its sd can collapse).
        step_size_jitter: range of the log of the random step-size factor (0 for
            none).

    Returns:
        ``(positions, info)`` after all steps.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> start = 1.0 + 0.5 * jax.random.normal(jax.random.key(1), (2000, 2))
        >>> moved, info = mala_move(jax.random.key(0), lambda x: -0.5 * x @ x, start)
        >>> bool(jnp.all(jnp.abs(moved.mean(0)) < 0.1))
        True
        >>> bool(jnp.all(jnp.abs(moved.std(0) - 1.0) < 0.1))
        True
        >>> info.gradient_evaluations
        202000
    """
    num_chains, dim = positions.shape
    scale = jnp.maximum(jnp.std(positions, axis=0), min_scale)
    step = jax.vmap(mala_step, in_axes=(0, 0, None, 0, None))

    def adapt_and_step(carry, inputs):
        states, log_h = carry
        key, index = inputs
        jitter_key, chains_key = jax.random.split(key)
        jitter = jax.random.uniform(jitter_key, (num_chains,))
        step_size = jnp.exp(log_h - step_size_jitter * jitter)
        chain_keys = jax.random.split(chains_key, num_chains)
        states, info = step(chain_keys, states, logdensity_fn, step_size, scale)
        adapting = index < num_adapt
        rate = info.acceptance_rate
        log_h = log_h + adapting * (rate - target_acceptance) / (index + 1.0) ** 0.6
        return (states, log_h), jnp.mean(rate)

    states = jax.vmap(mala_init, in_axes=(0, None))(positions, logdensity_fn)
    log_h0 = jnp.full((num_chains,), jnp.log(1.0 / dim ** (1.0 / 6.0)))
    total = num_adapt + num_steps
    keys = jax.random.split(rng_key, total)
    (states, log_h), rates = jax.lax.scan(
        adapt_and_step, (states, log_h0), (keys, jnp.arange(total))
    )
    info = MALAInfo(
        acceptance_rate=jnp.mean(rates[num_adapt:]),
        step_size=jnp.exp(log_h),
        gradient_evaluations=num_chains * (total + 1),
    )
    return states.position, info
