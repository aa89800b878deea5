"""Sample-quality metrics of the benchmarks, each with a known-answer test.

Definitions follow ``shared/docs/method.md`` Part B §6.  Two remarks:

* :func:`sinkhorn_cost` is the paper's "Sinkhorn" exactly as its code computes it:
  log-domain Sinkhorn at eps = 1e-3 from zero potentials, stopped after at most 100
  iterations, in the reference code's orientation (method.md Part C, item 1): after
  the last iteration every exact draw is fully transported and the model's side is
  not balanced, which penalises dropped modes and under-dispersion (the other order
  is lenient on both).  At that eps, 100 iterations are far from convergence when the clouds
  are far apart (a cloud against its copy shifted by 3 gives about 0.6, not 3;
  measured with OTT-JAX), so the value is a protocol-specific number, comparable
  with the paper's but not a Wasserstein distance; ``converged`` says which case
  applies.  :func:`sinkhorn_divergence` (squared Euclidean cost, debiased, at a
  regularisation where it converges) is the counterpart of OSDS's metric.
* :func:`mmd` leaves out the kernel's diagonal, so it has no ``1/(n-1)`` floor.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import costs, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn
from ott.tools import sinkhorn_divergence as ott_divergence

from numpyro_cds.diagnostics import mode_statistics, standardized_errors
from numpyro_cds.importance import importance_ess

__all__ = [
    "sinkhorn_cost",
    "sinkhorn_divergence",
    "mmd",
    "entropic_mode_coverage",
    "modes_hit",
    "importance_ess",
    "log_z_error",
    "max_mode_weight_error",
    "max_quantile_error",
    "max_standardized_errors",
]

SINKHORN_EPSILON = 1e-3


@jax.jit
def _paper_sinkhorn(x, y):
    geometry = pointcloud.PointCloud(
        x, y, cost_fn=costs.Euclidean(), epsilon=SINKHORN_EPSILON
    )
    solver = sinkhorn.Sinkhorn(max_iterations=100, threshold=1e-5)
    output = solver(linear_problem.LinearProblem(geometry))
    return jnp.sum(output.matrix * geometry.cost_matrix), output.converged


def sinkhorn_cost(
    model_draws: np.ndarray, exact_draws: np.ndarray
) -> tuple[float, bool]:
    """The paper's Sinkhorn: transport cost of the entropic plan after <= 100 iterations.

    Uniform weights, ground cost ``|x_i - y_j|`` (the Euclidean norm, not its square),
    eps = 1e-3, log-domain updates from zero potentials, at most 100 iterations,
    tolerance 1e-5; the value is ``sum_ij P_ij C_ij`` (not debiased).  Between two
    finite samples of one distribution it is positive, a floor that shrinks with the
    sample size: compare a method with exact draws of the same size (the excess over
    the floor).

    The reference code calls ``sinkhorn(model_draws, exact_draws)`` and updates the
    row (model) potential before the column (exact) one; OTT-JAX updates in the other
    order, so the reference metric is OTT's with the clouds swapped.  The two orders
    disagree by a factor of three on a sample missing one of nine modes.

    Args:
        model_draws: ``(n, d)`` draws of the method.
        exact_draws: ``(m, d)`` exact draws of the target.

    Returns:
        ``(cost, converged)``; ``converged`` is False when the plan's marginals are
        still off by more than 1e-5 after 100 iterations (see the module docstring).
    """
    cost, converged = _paper_sinkhorn(
        jnp.asarray(exact_draws, jnp.float32), jnp.asarray(model_draws, jnp.float32)
    )
    return float(cost), bool(converged)


def sinkhorn_divergence(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased Sinkhorn divergence with squared Euclidean cost, computed by OTT-JAX.

    ``S = OT_eps(x, y) - OT_eps(x, x) / 2 - OT_eps(y, y) / 2`` with OTT's default
    regularisation, eps = 5 % of the mean cost.  OSDS used eps = 1e-3, which does
    not converge in OTT's 2000 iterations (a cloud against its translate by
    ``d``, where ``S = |d|^2`` exactly, gave 4.48 instead of 5), so its values
    depended on the iteration cap.

    Args:
        x: ``(n, d)`` points.
        y: ``(m, d)`` points.

    Returns:
        The divergence (zero for identical clouds).
    """
    divergence, _ = ott_divergence.sinkhorn_divergence(
        pointcloud.PointCloud,
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.float32),
    )
    return float(divergence)


@jax.jit
def _mmd(x, y):
    pooled = jnp.concatenate([x, y])
    norms = jnp.sum(pooled**2, axis=-1)
    squared = jnp.maximum(norms[:, None] + norms[None] - 2.0 * pooled @ pooled.T, 0.0)
    upper = jnp.triu_indices(pooled.shape[0], k=1)
    bandwidth = jnp.median(jnp.sqrt(squared[upper]))
    kernel = jnp.exp(-squared / (2.0 * bandwidth**2))
    n, m = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    within_x = (jnp.sum(k_xx) - jnp.trace(k_xx)) / (n * (n - 1))
    within_y = (jnp.sum(k_yy) - jnp.trace(k_yy)) / (m * (m - 1))
    return within_x + within_y - 2.0 * jnp.mean(k_xy)


def mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD with a Gaussian kernel of median-heuristic bandwidth.

    The bandwidth ``h`` is the median pairwise distance of the pooled sample and the
    kernel ``exp(-|a - b|^2 / (2 h^2))``.  The within-sample sums leave out the
    diagonal, so the estimate is unbiased: it averages zero for two samples of one
    distribution and can be slightly negative.

    Args:
        x: ``(n, d)`` points.
        y: ``(m, d)`` points.

    Returns:
        The unbiased estimate of MMD^2.
    """
    return float(_mmd(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))


def entropic_mode_coverage(draws: np.ndarray, means: np.ndarray) -> float:
    """Entropy of the mode frequencies over the log of the number of modes.

    Draws are assigned to their nearest component mean
    (:func:`numpyro_cds.diagnostics.mode_statistics`).  1 means all modes are hit
    equally often, 0 means one mode holds every draw.
    """
    return mode_statistics(draws, means)["entropic_coverage"]


def modes_hit(draws: np.ndarray, means: np.ndarray, min_mass: float = 0.005) -> int:
    """Number of modes holding at least ``min_mass`` of the draws (nearest-mean rule)."""
    return mode_statistics(draws, means, min_mass=min_mass)["modes_found"]


def max_mode_weight_error(draws: np.ndarray, means: np.ndarray) -> float:
    """Largest ``|frequency - 1 / M|`` over ``M`` equally weighted modes (nearest mean)."""
    return mode_statistics(draws, means)["max_weight_error"]


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def max_quantile_error(draws: np.ndarray, exact: np.ndarray, dims) -> float:
    """Largest ``|quantile(draws) - quantile(exact)|`` over ``QUANTILES`` and ``dims``."""
    draws, exact = np.asarray(draws)[:, list(dims)], np.asarray(exact)[:, list(dims)]
    difference = np.quantile(draws, QUANTILES, axis=0) - np.quantile(
        exact, QUANTILES, axis=0
    )
    return float(np.max(np.abs(difference)))


def log_z_error(estimate: float, exact: float) -> float:
    """``|estimate - exact|``, the paper's ``|Delta log Z|``."""
    return float(abs(estimate - exact))


def max_standardized_errors(
    samples: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, float | str]:
    """Worst standardised mean error and worst log sd ratio over the parameters.

    Args:
        samples: flat Stan-named draws.
        reference: flat Stan-named reference draws (only their names are compared).

    Returns:
        ``{"max_mean_error", "worst_mean", "max_log_sd_ratio", "worst_sd"}``.
    """
    errors = standardized_errors(samples, reference)
    worst_mean = max(errors, key=lambda name: abs(errors[name][0]))
    worst_sd = max(errors, key=lambda name: abs(errors[name][1]))
    return {
        "max_mean_error": float(abs(errors[worst_mean][0])),
        "worst_mean": worst_mean,
        "max_log_sd_ratio": float(abs(errors[worst_sd][1])),
        "worst_sd": worst_sd,
    }


def jeffreys_divergence(log_weights) -> float:
    """``KL(p || q) + KL(q || p) = E_p[log w] - E_q[log w]`` from importance weights.

    The training monitor's first score, kept to compare with the Renyi-1/2 divergence
    that replaced it (``docs/design.rst``, "Training monitor"): the self-normalised
    weighted mean of the log weights minus their plain mean; ``inf`` if one is not
    finite.

    Example:
        >>> round(jeffreys_divergence([0.0, 1.0]), 4)
        0.2311
    """
    log_weights = np.asarray(log_weights, np.float64)
    if not np.all(np.isfinite(log_weights)):
        return np.inf
    normalised = np.exp(log_weights - np.max(log_weights))
    normalised /= np.sum(normalised)
    return float(np.sum(normalised * log_weights) - np.mean(log_weights))
