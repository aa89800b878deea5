"""Estimates and diagnostics from importance log weights; importance resampling.

Given draws ``x_i ~ q`` and log weights ``log w_i = log rho(x_i) - log q(x_i)`` for an
unnormalised target ``rho = Z p``:

* ``log Z`` is estimated by ``log mean w`` with a delta-method standard error
  ``sd(w) / (sqrt(n) mean(w))`` (the relative standard error of ``mean w``);
* the ELBO ``mean log w`` is a lower bound on ``log Z`` in expectation;
* the normalised ESS is ``(sum w)^2 / (n sum w^2)``;
* the Pareto k-hat of PSIS (Vehtari et al., 2024) says whether the weights have a
  finite variance: above 0.7, neither the estimates nor the draws can be trusted.

A weight of zero (``log w = -inf``, a draw outside the target's support) is valid; a NaN
log weight is an error.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

__all__ = [
    "KHAT_THRESHOLD",
    "NEGLIGIBLE_WEIGHT_RATIO",
    "ImportanceSummary",
    "log_evidence",
    "importance_ess",
    "pareto_khat",
    "summarize_weights",
    "psis_resample",
]

KHAT_THRESHOLD = 0.7
#: Weights whose largest is at most this many times their mean are all but equal: the
#: Pareto fit to their tail then fits rounding-level noise, and its k-hat says nothing.
NEGLIGIBLE_WEIGHT_RATIO = 1.05


class ImportanceSummary(NamedTuple):
    """Estimates from one set of importance log weights.

    Attributes:
        log_evidence: ``log mean w``, the estimate of ``log Z``.
        standard_error: its delta-method standard error.
        elbo: ``mean log w``.
        ess: normalised importance ESS in ``(0, 1]``.
        pareto_k: PSIS k-hat.
        num_draws: number of weights.
        max_weight_ratio: the largest weight over the mean weight.
    """

    log_evidence: float
    standard_error: float
    elbo: float
    ess: float
    pareto_k: float
    num_draws: int
    max_weight_ratio: float

    @property
    def reliable(self) -> bool:
        """k-hat at most :data:`KHAT_THRESHOLD`, or weights all but equal.

        A k-hat above the threshold says the weights' tail looks heavy.  When every
        weight is within :data:`NEGLIGIBLE_WEIGHT_RATIO` of the mean (a sampler
        almost exactly the target), that tail is a spread of under 5 % and its fitted
        shape is noise, not a sign of trouble.
        """
        return (
            self.pareto_k <= KHAT_THRESHOLD
            or self.max_weight_ratio <= NEGLIGIBLE_WEIGHT_RATIO
        )


def _checked(log_weights) -> np.ndarray:
    log_weights = np.asarray(log_weights, np.float64).ravel()
    if np.isnan(log_weights).any():
        raise ValueError(
            f"{int(np.isnan(log_weights).sum())} of {log_weights.size} log weights are "
            "NaN: the model's log density or the sampler produced NaN at those draws."
        )
    if not np.isfinite(log_weights).any():
        raise ValueError("every importance weight is zero (all log weights are -inf).")
    return log_weights


def log_evidence(log_weights) -> tuple[float, float]:
    """``log Z`` estimate ``log mean w`` and its delta-method standard error.

    Args:
        log_weights: ``log rho(x_i) - log q(x_i)`` for independent draws from ``q``.

    Returns:
        ``(estimate, standard_error)`` as floats.

    Example:
        >>> import numpy as np
        >>> estimate, se = log_evidence(np.log([1.0, 1.0, 1.0, 1.0]))
        >>> float(estimate), float(se)
        (0.0, 0.0)
    """
    log_weights = _checked(log_weights)
    shift = np.max(log_weights)
    weights = np.exp(log_weights - shift)
    mean = np.mean(weights)
    standard_error = np.std(weights, ddof=1) / (np.sqrt(weights.size) * mean)
    return float(shift + np.log(mean)), float(standard_error)


def importance_ess(log_weights) -> float:
    """Normalised importance ESS, ``(sum w)^2 / (n sum w^2)`` in ``(0, 1]``."""
    log_weights = _checked(log_weights)
    return float(
        np.exp(
            2 * logsumexp(log_weights)
            - logsumexp(2 * log_weights)
            - np.log(log_weights.size)
        )
    )


def _psislw(log_weights: np.ndarray):
    import arviz as az

    if int(az.__version__.split(".")[0]) >= 1:
        # ArviZ 1.x's psislw takes the log-likelihood convention (it negates its input).
        return az.psislw(-log_weights)
    return az.psislw(log_weights)


def pareto_khat(log_weights) -> float:
    """PSIS Pareto k-hat of the weights (ArviZ): > 0.7 means unreliable."""
    log_weights = _checked(log_weights)
    _, k = _psislw(log_weights.copy())
    return float(np.asarray(k))


def summarize_weights(log_weights) -> ImportanceSummary:
    """All estimates of :class:`ImportanceSummary` from one set of log weights."""
    log_weights = _checked(log_weights)
    estimate, standard_error = log_evidence(log_weights)
    finite = log_weights[np.isfinite(log_weights)]
    elbo = float(np.mean(log_weights)) if finite.size == log_weights.size else -np.inf
    return ImportanceSummary(
        log_evidence=estimate,
        standard_error=standard_error,
        elbo=elbo,
        ess=importance_ess(log_weights),
        pareto_k=pareto_khat(log_weights),
        num_draws=log_weights.size,
        max_weight_ratio=float(
            np.exp(
                np.max(log_weights) - logsumexp(log_weights) + np.log(log_weights.size)
            )
        ),
    )


def psis_resample(rng_key, log_weights, num_samples: int) -> jax.Array:
    """Indices of ``num_samples`` draws resampled by their Pareto-smoothed weights.

    Systematic resampling (one uniform offset, ``num_samples`` evenly spaced points on
    the weights' cumulative sum), which has lower variance than multinomial draws.

    Args:
        rng_key: PRNG key.
        log_weights: importance log weights of the draws.
        num_samples: number of indices to return.

    Returns:
        Integer indices into the draws, shape ``(num_samples,)``.
    """
    log_weights = _checked(log_weights)
    smoothed, _ = _psislw(log_weights.copy())
    weights = np.exp(np.asarray(smoothed) - logsumexp(smoothed))
    cumulative = jnp.asarray(np.cumsum(weights) / np.sum(weights))
    offset = jax.random.uniform(rng_key)
    points = (offset + jnp.arange(num_samples)) / num_samples
    return jnp.minimum(jnp.searchsorted(cumulative, points), log_weights.size - 1)
