r"""Variance-preserving SDE: noise schedule, time grid and the two discretised steps.

Time runs forward in *generative* time ``t`` in ``[0, 1]``: ``t = 0`` is the prior end,
``N(0, I)``, and ``t = 1`` the target end.  The controlled SDE is

.. math:: dX_t = [\tfrac12\beta(t) X_t + \sigma(t) u(X_t, t)]\,dt + \sigma(t)\,dW_t,

with :math:`\sigma(t) = \sqrt{\beta(t)}`; its probability-flow ODE is
:math:`dX/dt = \tfrac12\beta(t) X + \tfrac12\sigma(t) u(X, t)`.  With the control
:math:`u = -\sigma x` (the prior score times sigma) the SDE is stationary at ``N(0, I)``
and the probability flow is the identity.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = [
    "AbstractSchedule",
    "LinearSchedule",
    "probability_flow_drift",
    "euler_maruyama_step",
    "probability_flow_step",
]


class AbstractSchedule(eqx.Module):
    """A noise schedule ``beta(t)`` on generative time ``t`` in ``[0, 1]``."""

    @abc.abstractmethod
    def beta(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """Noise rate at generative time ``t``."""

    def sigma(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """Diffusion coefficient ``sqrt(beta(t))``."""
        return jnp.sqrt(self.beta(t))

    @abc.abstractmethod
    def beta_integral(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """``B = integral of beta from t to 1``: the noising from the target to ``t``.

        The uncontrolled noising process started at a target draw ``y`` is at
        generative time ``t`` distributed as ``N(exp(-B / 2) y, (1 - exp(-B)) I)``.
        """

    def noising_marginal(self, t: Float[Array, ""]):
        """``(alpha, s)``: a target draw ``y`` noised to ``t`` is ``alpha y + s z``."""
        integral = self.beta_integral(t)
        return jnp.exp(-0.5 * integral), jnp.sqrt(-jnp.expm1(-integral))


class LinearSchedule(AbstractSchedule):
    """Linear VP schedule: ``beta`` falls from ``beta_max`` (prior) to ``beta_min``.

    Example:
        >>> schedule = LinearSchedule()
        >>> round(float(schedule.beta(0.0)), 6), round(float(schedule.beta(1.0)), 6)
        (10.0, 0.1)
    """

    beta_min: float = eqx.field(static=True, default=0.1)
    beta_max: float = eqx.field(static=True, default=10.0)

    def __check_init__(self):
        if not 0 < self.beta_min <= self.beta_max:
            raise ValueError(
                f"LinearSchedule needs 0 < beta_min <= beta_max, got beta_min="
                f"{self.beta_min}, beta_max={self.beta_max}."
            )

    def beta(self, t):
        """Noise rate at generative time ``t``."""
        return self.beta_max + (self.beta_min - self.beta_max) * jnp.asarray(t)

    def beta_integral(self, t):
        """``integral of beta from t to 1`` (exact: the trapezoid of a line)."""
        return 0.5 * (self.beta(t) + self.beta_min) * (1.0 - jnp.asarray(t))


def probability_flow_drift(schedule: AbstractSchedule, x, t, u):
    """Drift ``beta(t) x / 2 + sigma(t) u / 2`` of the probability-flow ODE."""
    return 0.5 * schedule.beta(t) * x + 0.5 * schedule.sigma(t) * u


def probability_flow_step(schedule: AbstractSchedule, x, t, dt, u):
    """One explicit Euler step of the probability-flow ODE from time ``t``."""
    return x + dt * probability_flow_drift(schedule, x, t, u)


def euler_maruyama_step(schedule: AbstractSchedule, x, t, dt, u, noise):
    """One Euler-Maruyama step of the controlled SDE.

    Args:
        schedule: the noise schedule.
        x: current state.
        t: current generative time.
        dt: step length.
        u: control evaluated at ``(x, t)``.
        noise: the Brownian increment ``dW`` (standard normal times ``sqrt(dt)``).

    Returns:
        The next state.
    """
    sigma = schedule.sigma(t)
    return x + (0.5 * schedule.beta(t) * x + sigma * u) * dt + sigma * noise
