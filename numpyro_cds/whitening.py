"""An affine map to a whitened space, fitted before training.

The diffusion's prior is ``N(0, I)``, so the sampler works on ``z = (x - loc) / scale``.
The whitened log density is ``log rho(loc + scale * z) + sum(log scale)``: the map's
log-determinant is part of the sampler's density, so importance weights and evidence
estimates stay exact.

``"auto"`` fits mean-field Gaussian variational approximations from several dispersed
starting points at once and moment-matches their mixture (weighted by their ELBOs).
On a unimodal posterior every start finds the same Gaussian; on a multimodal one the
starts land in different modes and the mixture spans them, so the whitening does not
collapse onto one mode.  The starts are NumPyro's initial points, also scaled by 10 and
100, so that modes far from the initial box are reached.  The fits take natural-gradient
(Newton-like) steps, which are invariant to the scale of each coordinate, so a posterior
with sd 2e4 next to one with sd 1e-3 is fitted as easily as a standard normal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["AffineWhitening", "WhiteningConfig", "fit_whitening", "whitening_from_spec"]


class AffineWhitening(eqx.Module):
    """The affine map ``x = loc + scale * z`` from whitened to unconstrained space.

    Example:
        >>> import jax.numpy as jnp
        >>> w = AffineWhitening(jnp.array([1.0, 2.0]), jnp.array([2.0, 0.5]))
        >>> w.unwhiten(jnp.zeros(2)).tolist(), float(w.log_det)
        ([1.0, 2.0], 0.0)
    """

    loc: Float[Array, " dim"]
    scale: Float[Array, " dim"]

    def __check_init__(self):
        if self.loc.shape != self.scale.shape or self.loc.ndim != 1:
            raise ValueError(
                f"whitening loc and scale must be vectors of one shape, got "
                f"{self.loc.shape} and {self.scale.shape}."
            )

    @property
    def log_det(self) -> Float[Array, ""]:
        """``log |det|`` of the map from whitened to unconstrained space."""
        return jnp.sum(jnp.log(self.scale))

    def unwhiten(self, z: Float[Array, "... dim"]) -> Float[Array, "... dim"]:
        """Whitened -> unconstrained."""
        return self.loc + self.scale * z

    def whiten(self, x: Float[Array, "... dim"]) -> Float[Array, "... dim"]:
        """Unconstrained -> whitened."""
        return (x - self.loc) / self.scale

    def whitened_logdensity(self, logdensity_fn: Callable) -> Callable:
        """Log density on the whitened space, including the log-determinant."""
        return lambda z: logdensity_fn(self.unwhiten(z)) + self.log_det


@dataclasses.dataclass(frozen=True, kw_only=True)
class WhiteningConfig:
    """Settings of the ``"auto"`` whitening fit.

    Attributes:
        num_steps: natural-gradient steps of each variational fit.
        learning_rate: step fraction of each natural-gradient step, in (0, 1].
        num_draws: Monte Carlo draws per step (antithetic pairs; even).
        start_spreads: the starting points are used as given and multiplied by each of
            these factors, so that modes far from NumPyro's initial box (``[-2, 2]`` in
            the unconstrained space) are found too.  Starts whose fit is not finite
            (e.g. ``exp`` overflowing) are dropped; fits with a much lower ELBO get
            negligible weight.
        max_elbo_gap: fits whose ELBO is more than this many nats below the best are
            left out of the mixture (they hold under ``exp(-gap)`` of its mass).
    """

    num_steps: int = 500
    learning_rate: float = 0.1
    num_draws: int = 64
    start_spreads: tuple[float, ...] = (1.0, 10.0, 100.0)
    max_elbo_gap: float = 3.0

    def __post_init__(self):
        for name in ("num_steps", "num_draws"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not 0 < self.learning_rate <= 1:
            raise ValueError("learning_rate must lie in (0, 1].")
        if self.num_draws % 2:
            raise ValueError("num_draws must be even (antithetic pairs).")


def _elbo(logdensity_fn, mean, log_scale, noise):
    draws = mean + jnp.exp(log_scale) * noise
    log_densities = jax.vmap(logdensity_fn)(draws)
    return jnp.mean(log_densities) + jnp.sum(log_scale)


def _curvature_precision(logdensity_fn, x):
    """``-d2 log p / dx_i2`` at ``x`` where positive and finite, else 1."""
    grad_fn = jax.grad(logdensity_fn)
    basis = jnp.eye(x.shape[0], dtype=x.dtype)
    diagonal = jax.vmap(lambda v: jnp.vdot(v, jax.jvp(grad_fn, (x,), (v,))[1]))(basis)
    usable = jnp.isfinite(diagonal) & (diagonal < 0)
    return jnp.clip(jnp.where(usable, -diagonal, 1.0), 1e-12, 1e12)


def _fit_one(rng_key, logdensity_fn, init_position, config):
    """Mean-field Gaussian VI by natural-gradient steps from one start.

    Each step estimates the expected gradient and, by Price's theorem
    (``E[d2 log p / dx_i2] = E[g_i eps_i] / s_i``), the expected diagonal curvature
    from antithetic draws, then moves ``precision`` a fraction ``learning_rate`` of the
    way to that curvature and takes the damped Newton step ``learning_rate * E[g] /
    precision`` on the mean.  The steps are
    invariant to rescaling each coordinate.  The iterates of the last quarter are
    averaged.

    Returns:
        Mean, log scale and an ELBO estimate.
    """
    grad_fn = jax.vmap(jax.grad(logdensity_fn))
    dim = init_position.shape[0]
    rate = config.learning_rate
    num_average = max(1, config.num_steps // 4)

    def step(carry, inputs):
        mean, precision, mean_sum, precision_sum = carry
        key, index = inputs
        half = jax.random.normal(key, (config.num_draws // 2, dim))
        noise = jnp.concatenate([half, -half])
        scale = jax.lax.rsqrt(precision)
        grads = grad_fn(mean + scale * noise)
        grads = jnp.nan_to_num(grads, nan=0.0, posinf=0.0, neginf=0.0)
        curvature = -jnp.mean(grads * noise, 0) / scale
        new_precision = (1 - rate) * precision + rate * jnp.maximum(
            curvature, 1e-3 * precision
        )
        new_mean = mean + rate * jnp.mean(grads, 0) / new_precision
        finite = jnp.all(jnp.isfinite(new_mean)) & jnp.all(
            jnp.isfinite(new_precision) & (new_precision > 0)
        )
        mean = jnp.where(finite, new_mean, mean)
        precision = jnp.where(finite, new_precision, precision)
        averaging = index >= config.num_steps - num_average
        mean_sum = mean_sum + jnp.where(averaging, mean, 0.0)
        precision_sum = precision_sum + jnp.where(averaging, precision, 0.0)
        return (mean, precision, mean_sum, precision_sum), None

    fit_key, elbo_key = jax.random.split(rng_key)
    precision = _curvature_precision(logdensity_fn, init_position)
    zeros = jnp.zeros_like(init_position)
    carry = (init_position, precision, zeros, zeros)
    inputs = (jax.random.split(fit_key, config.num_steps), jnp.arange(config.num_steps))
    (_, _, mean_sum, precision_sum), _ = jax.lax.scan(step, carry, inputs)
    mean = mean_sum / num_average
    log_scale = -0.5 * jnp.log(precision_sum / num_average)
    noise = jax.random.normal(elbo_key, (4 * config.num_draws, dim))
    return mean, log_scale, _elbo(logdensity_fn, mean, log_scale, noise)


def fit_whitening(
    rng_key: PRNGKeyArray,
    logdensity_fn: Callable,
    init_positions: Float[Array, "num_starts dim"],
    config: WhiteningConfig | None = None,
) -> AffineWhitening:
    """Fit the ``"auto"`` whitening: multi-start mean-field VI, mixture moment match.

    Args:
        rng_key: PRNG key.
        logdensity_fn: unnormalised log density of one flat vector.
        init_positions: dispersed starting points, shape ``(num_starts, dim)``; each
            is also used multiplied by every factor in ``config.start_spreads``.
        config: fit settings.

    Returns:
        The fitted whitening.

    Raises:
        ValueError: no start gives a finite ELBO.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logdensity = lambda x: -0.5 * jnp.sum(((x - 3.0) / 2.0) ** 2)
        >>> starts = jnp.zeros((2, 1))
        >>> w = fit_whitening(jax.random.key(0), logdensity, starts)
        >>> bool(jnp.abs(w.loc - 3.0) < 0.3), bool(jnp.abs(w.scale - 2.0) < 0.3)
        (True, True)
    """
    config = WhiteningConfig() if config is None else config
    init_positions = jnp.concatenate(
        [init_positions * factor for factor in config.start_spreads]
    )
    keys = jax.random.split(rng_key, init_positions.shape[0])
    fit = jax.jit(jax.vmap(lambda k, x0: _fit_one(k, logdensity_fn, x0, config)))
    means, log_scales, elbos = fit(keys, init_positions)
    finite = np.array(
        jnp.isfinite(elbos)
        & jnp.all(jnp.isfinite(means), -1)
        & jnp.all(jnp.isfinite(log_scales), -1)
    )
    if not finite.any():
        raise ValueError(
            "Fitting the whitening failed: no start gave a finite ELBO. Pass "
            "whitening=(loc, scale) with a rough location and scale of the posterior "
            "in the unconstrained space, or whitening=None."
        )
    # Keep fits within ``max_elbo_gap`` nats of the best: a fit that ended far below it
    # (an unconverged start in a flat, low-mass region) holds little mass but can have
    # enormous scales, which would dominate the moment match.
    finite &= np.asarray(
        elbos >= jnp.max(jnp.where(finite, elbos, -jnp.inf)) - config.max_elbo_gap
    )
    means, log_scales, elbos = means[finite], log_scales[finite], elbos[finite]
    weights = jax.nn.softmax(elbos)
    loc = jnp.sum(weights[:, None] * means, 0)
    within = jnp.sum(weights[:, None] * jnp.exp(2 * log_scales), 0)
    between = jnp.sum(weights[:, None] * (means - loc) ** 2, 0)
    scale = jnp.sqrt(within + between)
    return AffineWhitening(loc, scale)


def whitening_from_spec(
    spec: tuple | Sequence, dim: int, dtype=jnp.float32
) -> AffineWhitening:
    """A whitening from a user's ``(loc, scale)``: scalars or arrays of length ``dim``.

    Raises:
        ValueError: wrong shapes, or a scale that is not positive and finite.
    """
    if not isinstance(spec, (tuple, list)) or len(spec) != 2:
        raise ValueError(
            f"whitening must be 'auto', None or a pair (loc, scale); got {spec!r}."
        )
    arrays = []
    for name, value in zip(("loc", "scale"), spec, strict=True):
        array = jnp.asarray(value, dtype)
        if array.ndim == 0:
            array = jnp.full((dim,), array)
        if array.shape != (dim,):
            raise ValueError(
                f"whitening {name} must be a scalar or have shape ({dim},) (the "
                f"number of unconstrained latent dimensions); got shape {array.shape}."
            )
        if not bool(jnp.all(jnp.isfinite(array))):
            raise ValueError(f"whitening {name} must be finite.")
        arrays.append(array)
    if not bool(jnp.all(arrays[1] > 0)):
        raise ValueError("whitening scale must be positive.")
    return AffineWhitening(*arrays)
