"""An affine map to a whitened space, fitted before training.

The diffusion's prior is ``N(0, I)``, so the sampler works on ``z = S^-1 (x - loc)``,
with ``S`` a per-coordinate scale (mean field) or a lower-triangular Cholesky factor
(full rank).  The whitened log density is ``log rho(loc + S z) + log|det S|``: the
map's log-determinant is part of the sampler's density, so importance weights and
evidence estimates stay exact.

``"auto"`` fits Gaussian variational approximations from several dispersed starting
points at once and moment-matches their mixture (weighted by their ELBOs).  On a
unimodal posterior every start finds the same Gaussian; on a multimodal one the
starts land in different modes and the mixture spans them, so the whitening does not
collapse onto one mode.  The starts are NumPyro's initial points, also scaled by 10 and
100, so that modes far from the initial box are reached.  The fits take natural-gradient
(Newton-like) steps, which are invariant to affine reparameterisation (full rank) or to
the scale of each coordinate (mean field), so a posterior with sd 2e4 next to one with
sd 1e-3, or with correlations of 0.999, is fitted as easily as a standard normal.  Up
to :attr:`WhiteningConfig.full_rank_max_dim` dimensions the Gaussians are full rank,
so correlated posteriors (regressions with uncentred predictors) become isotropic;
above it they are mean field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = [
    "AffineWhitening",
    "WhiteningConfig",
    "check_proper",
    "fit_whitening",
    "whitening_from_spec",
]


class AffineWhitening(eqx.Module):
    """The affine map ``x = loc + S z`` from whitened to unconstrained space.

    ``scale`` is either a vector (``S = diag(scale)``) or a lower-triangular matrix
    with a positive diagonal (a Cholesky factor of the covariance).

    Example:
        >>> import jax.numpy as jnp
        >>> w = AffineWhitening(jnp.array([1.0, 2.0]), jnp.array([2.0, 0.5]))
        >>> w.unwhiten(jnp.zeros(2)).tolist(), float(w.log_det)
        ([1.0, 2.0], 0.0)
        >>> full = AffineWhitening(jnp.zeros(2), jnp.array([[2.0, 0.0], [1.0, 0.5]]))
        >>> full.unwhiten(jnp.array([1.0, 1.0])).tolist()
        [2.0, 1.5]
    """

    loc: Float[Array, " dim"]
    scale: Float[Array, " dim"] | Float[Array, "dim dim"]

    def __check_init__(self):
        dim = self.loc.shape[0] if self.loc.ndim == 1 else -1
        if dim < 0 or self.scale.shape not in ((dim,), (dim, dim)):
            raise ValueError(
                f"whitening loc must be a vector and scale a vector of its shape or a "
                f"square matrix; got shapes {self.loc.shape} and {self.scale.shape}."
            )

    @property
    def full_rank(self) -> bool:
        """Whether ``scale`` is a Cholesky factor (else a per-coordinate scale)."""
        return self.scale.ndim == 2

    @property
    def marginal_scale(self) -> Float[Array, " dim"]:
        """Standard deviation per coordinate of ``loc + S z`` for ``z ~ N(0, I)``."""
        if self.full_rank:
            return jnp.sqrt(jnp.sum(self.scale**2, axis=1))
        return self.scale

    @property
    def log_det(self) -> Float[Array, ""]:
        """``log |det S|`` of the map from whitened to unconstrained space."""
        diagonal = jnp.diagonal(self.scale) if self.full_rank else self.scale
        return jnp.sum(jnp.log(diagonal))

    def unwhiten(self, z: Float[Array, "... dim"]) -> Float[Array, "... dim"]:
        """Whitened -> unconstrained."""
        if self.full_rank:
            return self.loc + z @ self.scale.T
        return self.loc + self.scale * z

    def whiten(self, x: Float[Array, "... dim"]) -> Float[Array, "... dim"]:
        """Unconstrained -> whitened."""
        if not self.full_rank:
            return (x - self.loc) / self.scale
        centred = (x - self.loc).reshape(-1, self.loc.shape[0])
        z = jax.scipy.linalg.solve_triangular(self.scale, centred.T, lower=True).T
        return z.reshape(x.shape)

    def whitened_logdensity(self, logdensity_fn: Callable) -> Callable:
        """Log density on the whitened space, including the log-determinant."""
        return lambda z: logdensity_fn(self.unwhiten(z)) + self.log_det


@dataclasses.dataclass(frozen=True, kw_only=True)
class WhiteningConfig:
    """Settings of the ``"auto"`` whitening fit.

    Attributes:
        num_steps: natural-gradient steps of each variational fit.
        learning_rate: step fraction of each natural-gradient step, in (0, 1].
        num_draws: Monte Carlo draws per step (antithetic pairs; even).  Full-rank
            fits use at least ``2 * dim`` so that the curvature regression is
            determined.
        start_spreads: the starting points are used as given and multiplied by each of
            these factors, so that modes far from NumPyro's initial box (``[-2, 2]`` in
            the unconstrained space) are found too.  Starts whose fit is not finite
            (e.g. ``exp`` overflowing) are dropped; fits with a much lower ELBO get
            negligible weight.
        max_elbo_gap: fits whose ELBO is more than this many nats below the best are
            left out of the mixture (they hold under ``exp(-gap)`` of its mass).
        full_rank_max_dim: up to this many dimensions the Gaussians are full rank;
            above it mean field (each full-rank step costs ``O(dim**3)``).  0 makes
            every fit mean field.
        max_variance_growth: the fit with the best ELBO is refused (the posterior
            looks improper) when a coordinate's variance, averaged over the last
            quarter of the steps, exceeds this multiple of its average over the
            quarter before.
        max_scale: the fit with the best ELBO is refused (the posterior looks
            improper) when a coordinate's standard deviation ends above this, in the
            coordinates of the fit: a fit that ran off until its steps overflowed
            stops growing (so ``max_variance_growth`` misses it), but far beyond any
            scale a float32 sampler can handle.
    """

    num_steps: int = 500
    learning_rate: float = 0.1
    num_draws: int = 64
    start_spreads: tuple[float, ...] = (1.0, 10.0, 100.0)
    max_elbo_gap: float = 3.0
    full_rank_max_dim: int = 128
    max_variance_growth: float = 100.0
    max_scale: float = 1e5

    def __post_init__(self):
        for name in ("num_steps", "num_draws"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.full_rank_max_dim, int) or self.full_rank_max_dim < 0:
            raise ValueError(
                "full_rank_max_dim must be a non-negative integer, got "
                f"{self.full_rank_max_dim!r}."
            )
        if not self.max_variance_growth > 1:
            raise ValueError("max_variance_growth must be above 1.")
        if not self.max_scale > 0:
            raise ValueError("max_scale must be positive.")
        if not 0 < self.learning_rate <= 1:
            raise ValueError("learning_rate must lie in (0, 1].")
        if self.num_draws % 2:
            raise ValueError("num_draws must be even (antithetic pairs).")


def _covariance(root):
    """Covariance ``R R^T`` of ``mean + R eps`` (``R = diag(root)`` for a vector)."""
    return root @ root.T if root.ndim == 2 else root**2


def _covariance_times(root, vector):
    """``R R^T v``."""
    return root @ (root.T @ vector) if root.ndim == 2 else root**2 * vector


def _cholesky(covariance):
    """Cholesky factor computed from the correlation matrix, for badly scaled inputs."""
    sd = jnp.sqrt(jnp.diagonal(covariance))
    return sd[:, None] * jnp.linalg.cholesky(covariance / jnp.outer(sd, sd))


def _draws(mean, root, noise):
    return mean + (noise @ root.T if root.ndim == 2 else noise * root)


def _elbo(logdensity_fn, mean, root, noise):
    log_densities = jax.vmap(logdensity_fn)(_draws(mean, root, noise))
    if root.ndim == 2:
        return jnp.mean(log_densities) + jnp.linalg.slogdet(root)[1]
    return jnp.mean(log_densities) + jnp.sum(jnp.log(root))


def _curvature_precision(logdensity_fn, x):
    """``-d2 log p / dx_i2`` at ``x`` where positive and finite, else 1."""
    grad_fn = jax.grad(logdensity_fn)
    basis = jnp.eye(x.shape[0], dtype=x.dtype)
    diagonal = jax.vmap(lambda v: jnp.vdot(v, jax.jvp(grad_fn, (x,), (v,))[1]))(basis)
    usable = jnp.isfinite(diagonal) & (diagonal < 0)
    return jnp.clip(jnp.where(usable, -diagonal, 1.0), 1e-12, 1e12)


def _natural_root_update(root, grads, noise, rate):
    """Root of the covariance after one natural-gradient step on the precision.

    In the coordinates ``eps`` of the current Gaussian (``x = mean + R eps``) the
    precision is ``I``; the expected curvature there, ``-R^T E[hess log p] R``, comes
    from Stein's identity ``E[grad log p(x) eps^T] = E[hess log p] R``.  Full rank
    estimates it by regressing the gradients on ``eps`` (exact for a Gaussian target
    once there are more draws than dimensions); mean field by ``E[g_i eps_i]``.  The
    new precision ``(1 - rate) I + rate * curvature`` (curvature floored at 1e-3 so it
    stays positive definite) is mapped back to ``x``.
    """
    if root.ndim == 1:
        curvature = -root * jnp.mean(grads * noise, 0)
        return root * jax.lax.rsqrt((1 - rate) + rate * jnp.maximum(curvature, 1e-3))
    hessian_times_root = jnp.linalg.solve(noise.T @ noise, noise.T @ grads).T
    curvature = -root.T @ hessian_times_root
    values, vectors = jnp.linalg.eigh(0.5 * (curvature + curvature.T))
    precision = (1 - rate) + rate * jnp.maximum(values, 1e-3)
    return root @ (vectors * jax.lax.rsqrt(precision))


def _fit_one(rng_key, logdensity_fn, init_position, config, full_rank):
    """Gaussian VI by natural-gradient steps from one start.

    Each step draws antithetic pairs from the current Gaussian, updates the
    covariance root by :func:`_natural_root_update` and takes the damped Newton step
    ``learning_rate * Sigma E[grad log p]`` on the mean.  The covariances and means of
    the last quarter of the steps are averaged.

    Returns:
        Mean, covariance (a vector of variances for mean field), an ELBO estimate,
        and two growths: the largest ratio of a coordinate's variance averaged over
        the last quarter of the steps to its average over the quarter before (about
        1 once the fit has converged; it keeps growing where the posterior is
        improper), and the largest standard deviation of a coordinate.
    """
    grad_fn = jax.vmap(jax.grad(logdensity_fn))
    dim = init_position.shape[0]
    rate = config.learning_rate
    num_draws = max(config.num_draws, 2 * dim) if full_rank else config.num_draws
    num_average = max(1, config.num_steps // 4)

    def step(carry, inputs):
        mean, root, mean_sum, covariance_sum, earlier_variance_sum = carry
        key, index = inputs
        half = jax.random.normal(key, (num_draws // 2, dim))
        noise = jnp.concatenate([half, -half])
        grads = grad_fn(_draws(mean, root, noise))
        grads = jnp.nan_to_num(grads, nan=0.0, posinf=0.0, neginf=0.0)
        new_root = _natural_root_update(root, grads, noise, rate)
        new_mean = mean + rate * _covariance_times(new_root, jnp.mean(grads, 0))
        finite = jnp.all(jnp.isfinite(new_mean)) & jnp.all(jnp.isfinite(new_root))
        mean = jnp.where(finite, new_mean, mean)
        root = jnp.where(finite, new_root, root)
        covariance = _covariance(root)
        averaging = index >= config.num_steps - num_average
        mean_sum = mean_sum + jnp.where(averaging, mean, 0.0)
        covariance_sum = covariance_sum + jnp.where(averaging, covariance, 0.0)
        earlier = (index >= config.num_steps - 2 * num_average) & ~averaging
        variance = jnp.diagonal(covariance) if full_rank else covariance
        earlier_variance_sum = earlier_variance_sum + jnp.where(earlier, variance, 0.0)
        carry = (mean, root, mean_sum, covariance_sum, earlier_variance_sum)
        return carry, None

    fit_key, elbo_key = jax.random.split(rng_key)
    root = jax.lax.rsqrt(_curvature_precision(logdensity_fn, init_position))
    root = jnp.diag(root) if full_rank else root
    carry = (
        init_position,
        root,
        jnp.zeros_like(init_position),
        0.0 * _covariance(root),
        jnp.zeros_like(init_position),
    )
    inputs = (jax.random.split(fit_key, config.num_steps), jnp.arange(config.num_steps))
    (_, _, mean_sum, covariance_sum, earlier_sum), _ = jax.lax.scan(step, carry, inputs)
    mean, covariance = mean_sum / num_average, covariance_sum / num_average
    variance = jnp.diagonal(covariance) if full_rank else covariance
    growth = jnp.max(variance / (earlier_sum / num_average))
    largest_sd = jnp.sqrt(jnp.max(variance))
    final_root = _cholesky(covariance) if full_rank else jnp.sqrt(covariance)
    noise = jax.random.normal(elbo_key, (4 * config.num_draws, dim))
    elbo = _elbo(logdensity_fn, mean, final_root, noise)
    return mean, covariance, elbo, jnp.stack([growth, largest_sd])


def _refuse_growth(growths, config: WhiteningConfig, advice: str) -> None:
    """Raise where a fit ran away (see ``max_variance_growth``, ``max_scale``).

    Args:
        growths: the fit's last-quarter variance growth and its largest sd.
        config: the fit's settings.
        advice: the last sentence of the message.
    """
    growth, largest_sd = (float(value) for value in growths)
    if growth > config.max_variance_growth:
        seen = (
            f"the Gaussian fit's variance still grew {growth:.3g}-fold over the last "
            f"quarter of its {config.num_steps} steps (a proper posterior's fit "
            "settles)"
        )
    elif largest_sd > config.max_scale:
        seen = (
            f"the Gaussian fit's standard deviation ran to {largest_sd:.3g} (above "
            f"max_scale={config.max_scale:g}) before its steps overflowed"
        )
    else:
        return
    raise ValueError(
        f"The posterior looks improper: {seen}. Check that every latent site has a "
        f"proper prior and that the data identify the parameters. {advice}"
    )


def check_proper(
    rng_key: PRNGKeyArray,
    logdensity_fn: Callable,
    whitening: AffineWhitening,
    init_positions: Float[Array, "num_starts dim"],
    config: WhiteningConfig | None = None,
) -> None:
    """Refuse a posterior that looks improper, for a whitening given, not fitted.

    The fits of :func:`fit_whitening` run in the whitened coordinates (from the
    whitened ``init_positions``): those of a proper posterior settle, while one that
    is improper (flat in some direction) keeps growing, or runs off until its steps
    overflow.  It costs what the ``"auto"`` fit costs, a small fraction of the
    training.  Where no fit is finite it cannot tell, and leaves it to the training
    and the importance weights.

    Raises:
        ValueError: the best fit's variance keeps growing or ran off (see
            ``config.max_variance_growth`` and ``config.max_scale``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> flat_in_x0 = lambda x: -0.5 * x[1] ** 2
        >>> identity = AffineWhitening(jnp.zeros(2), jnp.ones(2))
        >>> check_proper(jax.random.key(0), flat_in_x0, identity, jnp.zeros((2, 2)))
        Traceback (most recent call last):
        ...
        ValueError: The posterior looks improper: ...
    """
    config = WhiteningConfig() if config is None else config
    whitened = whitening.whitened_logdensity(logdensity_fn)
    starts = jax.vmap(whitening.whiten)(init_positions)
    advice = (
        "If the posterior is proper, pass whitening='auto', or a whitening=(loc, "
        "scale) nearer its location and scale in the unconstrained space."
    )
    fits = _fit_starts(rng_key, whitened, starts, config, advice)
    if fits is not None:
        _refuse_growth(fits[3], config, advice)


def _fit_starts(rng_key, logdensity_fn, init_positions, config, advice):
    """The Gaussian fits from every start (times every spread) near the best.

    Returns:
        ``(means, covariances, elbos, growths of the best)`` of the fits within
        ``config.max_elbo_gap`` of the best ELBO, or None where no fit is finite.

    Raises:
        ValueError: no fit is finite and one ran off past ``config.max_scale`` (an
            improper posterior: its ELBO overflowed as its variance grew).
    """
    init_positions = jnp.concatenate(
        [init_positions * factor for factor in config.start_spreads]
    )
    full_rank = init_positions.shape[1] <= config.full_rank_max_dim
    keys = jax.random.split(rng_key, init_positions.shape[0])
    fit = jax.jit(
        jax.vmap(lambda k, x0: _fit_one(k, logdensity_fn, x0, config, full_rank))
    )
    means, covariances, elbos, growths = fit(keys, init_positions)
    finite = np.array(
        jnp.isfinite(elbos)
        & jnp.all(jnp.isfinite(means), -1)
        & jnp.all(jnp.isfinite(covariances.reshape(len(elbos), -1)), -1)
    )
    if not finite.any():
        largest_sd = float(jnp.nanmax(growths[:, 1]))
        if largest_sd > config.max_scale:
            _refuse_growth(jnp.array([1.0, largest_sd]), config, advice)
        return None
    # Keep fits within ``max_elbo_gap`` nats of the best: a fit that ended far below it
    # (an unconverged start in a flat, low-mass region) holds little mass but can have
    # enormous scales, which would dominate the moment match.
    finite &= np.asarray(
        elbos >= jnp.max(jnp.where(finite, elbos, -jnp.inf)) - config.max_elbo_gap
    )
    means, covariances, elbos = means[finite], covariances[finite], elbos[finite]
    return means, covariances, elbos, growths[finite][jnp.argmax(elbos)]


def fit_whitening(
    rng_key: PRNGKeyArray,
    logdensity_fn: Callable,
    init_positions: Float[Array, "num_starts dim"],
    config: WhiteningConfig | None = None,
) -> AffineWhitening:
    """Fit the ``"auto"`` whitening: multi-start Gaussian VI, mixture moment match.

    Args:
        rng_key: PRNG key.
        logdensity_fn: unnormalised log density of one flat vector.
        init_positions: dispersed starting points, shape ``(num_starts, dim)``; each
            is also used multiplied by every factor in ``config.start_spreads``.
        config: fit settings.

    Returns:
        The fitted whitening: full rank (a Cholesky factor) up to
        ``config.full_rank_max_dim`` dimensions, else mean field.

    Raises:
        ValueError: no start gives a finite ELBO, or the best fit's variance keeps
            growing or ran off (an improper posterior; see
            ``config.max_variance_growth`` and ``config.max_scale``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> logdensity = lambda x: -0.5 * jnp.sum(((x - 3.0) / 2.0) ** 2)
        >>> starts = jnp.zeros((2, 1))
        >>> w = fit_whitening(jax.random.key(0), logdensity, starts)
        >>> bool(jnp.abs(w.loc - 3.0) < 0.3)
        True
        >>> bool(jnp.abs(w.marginal_scale - 2.0) < 0.3)
        True
    """
    config = WhiteningConfig() if config is None else config
    advice = (
        "If the posterior is proper but extremely wide, pass whitening=(loc, scale) "
        "with its location and scale in the unconstrained space."
    )
    fits = _fit_starts(rng_key, logdensity_fn, init_positions, config, advice)
    if fits is None:
        raise ValueError(
            "Fitting the whitening failed: no start gave a finite ELBO. Pass "
            "whitening=(loc, scale) with a rough location and scale of the posterior "
            "in the unconstrained space, or whitening=None."
        )
    means, covariances, elbos, growths = fits
    _refuse_growth(growths, config, advice)
    full_rank = covariances.ndim == 3
    weights = jax.nn.softmax(elbos)
    loc = jnp.einsum("k,ki->i", weights, means)
    # The spread between the fits enters per coordinate only: a handful of modes found
    # gives a between-fit covariance of rank below the dimension with chance
    # correlations (0.95 on the GMM grid, whose modes are uncorrelated).
    between = jnp.einsum("k,ki->i", weights, (means - loc) ** 2)
    if full_rank:
        within = jnp.einsum("k,kij->ij", weights, covariances)
        return AffineWhitening(loc, _cholesky(within + jnp.diag(between)))
    within = jnp.einsum("k,ki->i", weights, covariances)
    return AffineWhitening(loc, jnp.sqrt(within + between))


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
