r"""k-step Euler-Maruyama draws of the controlled SDE with path importance weights.

Drawing with ``k`` Euler-Maruyama steps of size ``dt = 1 / k`` (control conditioned on
``d = dt``) moves a prior draw ``x_0 ~ q_0`` with the forward kernels

.. math::
    F_n(x_{n+1} \mid x_n) = N\big(x_n + (\tfrac12\beta_n x_n + \sigma_n u_n)\,dt,\;
    \sigma_n^2\,dt\,I\big),

``beta_n = beta(t_n)``, ``sigma_n = sqrt(beta_n)``, ``u_n = u(x_n, t_n, dt)``.  The
density of the final state is intractable, that of the whole path is not.  For any
normalised backward kernels ``B_n`` the path weight

.. math::
    w = \frac{\rho(x_k) \prod_n B_n(x_n \mid x_{n+1})}
             {q_0(x_0) \prod_n F_n(x_{n+1} \mid x_n)}

has ``E[w] = Z`` exactly, whatever the control: integrating the target path law
``rho(x_k) prod_n B_n`` over ``x_0, ..., x_{k-1}`` leaves ``rho(x_k)``.  (The prior is
truncated to a box, so ``E[w]`` misses the target paths whose ``x_0`` falls outside it,
a relative ``2e-9`` per dimension at the default bound 6.)  Here ``B_n`` undoes the
uncontrolled step ``x_{n+1} = a_n x_n + sigma_n dW_n`` with ``a_n = 1 + beta_n dt / 2``:
``B_n(x_n | x_{n+1}) = N(x_{n+1} / a_n, sigma_n^2 dt / a_n^2 I)``.  Then
``a_n x_n - x_{n+1} = -sigma_n (u_n dt + dW_n)`` and the log ratio takes DIS's Ito form,

.. math::
    \log w = \log\rho(x_k) - \log q_0(x_0)
    - \sum_n \Big[\tfrac12 |u_n|^2 dt + u_n \cdot dW_n - D \log(1 + \tfrac12\beta_n dt)
    \Big],

exactly, at every ``k``.  DIS's evaluation formula has ``D beta_bar_n dt / 2``
(``beta_bar_n`` the trapezoid mean over the step) in place of
``D log(1 + beta_n dt / 2)``: the same as ``dt -> 0``, but at finite ``dt`` it
multiplies every weight by a constant and overestimates ``log Z`` by ``0.73 D`` at
``k = 1``, ``0.094 D`` at ``k = 16`` and ``0.026 D`` at ``k = 64`` (default schedule;
:func:`dis_constant_offset`).

The weights have no zero-variance optimum in discrete time: that would need the last
step's kernel to be proportional to ``rho(x_k) N(x_k; a x_{k-1}, sigma^2 dt I)`` in
``x_k``, a Gaussian of variance ``sigma^2 dt`` only for a log-linear, unnormalisable
``rho``.  For the target ``N(0, I)`` and its continuous-time optimal control
``u = -sigma x`` (the untrained control there), ``log w`` is a quadratic form in the
Gaussian path with ``E[w] = 1`` and ``Var(log w) = D (sum_n beta_n^2 dt^2 / 2 +
O(dt^2))``: ``0.29 D`` at ``k = 64``, ``0.067 D`` at ``k = 256``, zero only as
``k -> infinity``.  At ``k = N``, the training paths' step count, ``Var(log w)`` is
(``D`` times) exactly the log-variance loss that training minimises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .diffusion import batched_control
from .flow import truncated_normal_logdensity
from .sde import AbstractSchedule, euler_maruyama_step

__all__ = ["PathDraws", "run_sde", "dis_constant_offset"]


class PathDraws(NamedTuple):
    """Draws of ``k`` Euler-Maruyama steps, with their path log density ratios.

    Attributes:
        x: final states, shape ``(num_samples, dim)``.
        log_density: ``log q_0(x_0) + log prod_n F_n - log prod_n B_n`` of each path, so
            that ``log rho(x) - log_density`` is its importance log weight;
            ``exp(-log_density)`` is an unbiased estimate of ``1 / q(x)`` (up to the
            prior's truncation).
    """

    x: Float[Array, "num_samples dim"]
    log_density: Float[Array, " num_samples"]


def run_sde(
    rng_key: PRNGKeyArray,
    network,
    schedule: AbstractSchedule,
    score_fn: Callable,
    x0: Float[Array, "num_samples dim"],
    num_steps: int,
    clip: Float[Array, ""],
    prior_bound: float,
    use_target_score: bool = True,
) -> PathDraws:
    """Push prior draws through ``num_steps`` Euler-Maruyama steps of the SDE.

    Args:
        rng_key: PRNG key of the Brownian increments.
        network: the control network (conditioned on the step size ``1 / num_steps``).
        schedule: the noise schedule.
        score_fn: ``grad log rho`` of one state.
        x0: prior draws, ``N(0, I)`` truncated element-wise at ``+-prior_bound``.
        num_steps: number of equal steps from ``t = 0`` to ``t = 1``.
        clip: element-wise clip of the control's parts.
        prior_bound: truncation of the prior.
        use_target_score: False evaluates the controls without the target score
            (see :func:`~numpyro_cds.diffusion.control`).

    Returns:
        :class:`PathDraws`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro_cds.networks import ControlNetwork
        >>> from numpyro_cds.sde import LinearSchedule
        >>> network = ControlNetwork(2, width=8, key=jax.random.key(0))
        >>> x0 = jax.random.normal(jax.random.key(1), (5, 2))
        >>> draws = run_sde(jax.random.key(2), network, LinearSchedule(),
        ...                 lambda x: -x, x0, 4, 10.0, 6.0)
        >>> draws.x.shape, draws.log_density.shape
        ((5, 2), (5,))
    """
    dt = 1.0 / num_steps
    dim = x0.shape[-1]
    keys = jax.random.split(rng_key, num_steps)

    def advance(x, cost, t, key, scores):
        u = batched_control(network, schedule, x, t, dt, scores, clip)
        noise = jnp.sqrt(dt) * jax.random.normal(key, x.shape, x.dtype)
        cost = cost + jnp.sum(0.5 * u**2 * dt + u * noise, axis=-1)
        cost = cost - dim * jnp.log1p(0.5 * schedule.beta(t) * dt)
        return euler_maruyama_step(schedule, x, t, dt, u, noise), cost

    log_prior = jax.vmap(lambda x: truncated_normal_logdensity(x, prior_bound))(x0)
    # At t = 0 the target score has weight zero in the control: skip evaluating it.
    carry = advance(x0, log_prior, 0.0, keys[0], None)

    def body(carry, inputs):
        x, cost = carry
        t, key = inputs
        scores = jax.vmap(score_fn)(x) if use_target_score else None
        return advance(x, cost, t, key, scores), None

    (x, log_density), _ = jax.lax.scan(
        body, carry, (jnp.arange(1, num_steps) * dt, keys[1:])
    )
    return PathDraws(x, log_density)


def dis_constant_offset(schedule: AbstractSchedule, dim: int, num_steps: int) -> float:
    """How much DIS's evaluation constant raises ``log w`` and ``log Z`` at k steps.

    DIS's formula has ``D beta_bar_n dt / 2`` (trapezoid mean of ``beta`` over the
    step) where the exact path weight has ``D log(1 + beta_n dt / 2)``; the difference
    is the same for every path, so it only shifts ``log Z``.

    Args:
        schedule: the noise schedule.
        dim: dimension ``D``.
        num_steps: number of equal steps ``k``.

    Returns:
        ``D sum_n (beta_bar_n dt / 2 - log(1 + beta_n dt / 2))``.

    Example:
        >>> from numpyro_cds.sde import LinearSchedule
        >>> round(dis_constant_offset(LinearSchedule(), 1, 1), 3)
        0.733
    """
    dt = 1.0 / num_steps
    start = jnp.arange(num_steps) * dt
    beta, beta_next = schedule.beta(start), schedule.beta(start + dt)
    per_step = 0.25 * (beta + beta_next) * dt - jnp.log1p(0.5 * beta * dt)
    return dim * float(jnp.sum(per_step))
