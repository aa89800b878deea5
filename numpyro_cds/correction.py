"""The correction of a sampler's draws: importance resampling, then MALA moves.

``correction="resample"`` resamples the pool of draws by their Pareto-smoothed
importance weights (:func:`~numpyro_cds.importance.psis_resample`); ``"mcmc"`` then
moves every resampled draw by a short MALA chain in the whitened space
(:func:`~numpyro_cds.mcmc.mala_move`), which leaves the target invariant.  ``"auto"``
resamples alone when the pool's weights are healthy (:func:`auto_correction`) and
adds the moves otherwise.  The moves
are compiled once per target and shape: a second ``run`` with the same settings does
not compile again.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .importance import ImportanceSummary, psis_resample, summarize_weights
from .mcmc import MALAInfo, mala_move
from .report import (
    checked_log_weights,
    draws_description,
    warn_if_folded,
    warn_if_unreliable,
)
from .trained import Draws, TrainedSampler
from .whitening import AffineWhitening

__all__ = [
    "CORRECTIONS",
    "auto_correction",
    "check_correction",
    "checked_draws",
    "correct_draws",
    "draw_and_correct",
    "mala_correction",
]

#: What ``correction`` may be: no correction, resampling, resampling and MALA moves,
#: or the one of the last two that the weights ask for.
CORRECTIONS = (None, "resample", "mcmc", "auto")


def auto_correction(summary: ImportanceSummary, num_draws: int) -> tuple[str, str]:
    """The correction ``"auto"`` applies to a pool of weighted draws, and why.

    Resampling alone when the weights are reliable (Pareto k-hat at most 0.7, or all
    but equal: :attr:`~numpyro_cds.importance.ImportanceSummary.reliable`) and their
    effective number is at least ``num_draws``, so that the resampled draws repeat
    few pool draws; MALA moves too otherwise.

    Example:
        >>> from numpyro_cds.importance import summarize_weights
        >>> import numpy as np
        >>> auto_correction(summarize_weights(np.zeros(4000)), 1000)[0]
        'resample'
    """
    effective = summary.ess * summary.num_draws
    if not summary.reliable:
        return "mcmc", f"Pareto k-hat {summary.pareto_k:.2f} > 0.7"
    if effective < num_draws:
        return "mcmc", f"ESS {effective:.0f} < {num_draws} draws"
    return "resample", f"k-hat {summary.pareto_k:.2f}, ESS {effective:.0f}"


def check_correction(correction) -> str | None:
    """``correction`` if it is one of :data:`CORRECTIONS`, else a ValueError."""
    if correction not in CORRECTIONS:
        raise ValueError(
            f"correction must be one of {CORRECTIONS}; got {correction!r}."
        )
    return correction


def _mala_correction_uncompiled(
    rng_key, whitening, logdensity_fn, xs, num_steps
) -> tuple[Array, Array, MALAInfo]:
    half = num_steps // 2
    zs, info = mala_move(
        rng_key,
        whitening.whitened_logdensity(logdensity_fn),
        whitening.whiten(xs),
        num_adapt=half,
        num_steps=num_steps - half,
    )
    xs = whitening.unwhiten(zs)
    return xs, jax.vmap(logdensity_fn)(xs), info


#: ``eqx.debug.get_num_traces(_traced_mala_correction)`` counts its compilations.
_traced_mala_correction = eqx.debug.assert_max_traces(
    _mala_correction_uncompiled, max_traces=None
)
_compiled_mala_correction = eqx.filter_jit(_traced_mala_correction)


def mala_correction(
    rng_key: PRNGKeyArray,
    whitening: AffineWhitening,
    logdensity_fn: Callable,
    xs: Float[Array, "num_draws dim"],
    num_steps: int,
) -> tuple[Float[Array, "num_draws dim"], Float[Array, " num_draws"], MALAInfo]:
    """``num_steps`` MALA steps of every draw in the whitened space (half adapting).

    Args:
        rng_key: PRNG key.
        whitening: the sampler's whitening (the moves run on ``z = S^-1 (x - loc)``).
        logdensity_fn: the target's log density of one flat unconstrained vector;
            pass the same function object each time to reuse the compiled moves.
        xs: the draws to move.
        num_steps: MALA steps per draw.

    Returns:
        ``(moved draws, their log densities, MALAInfo)``.
    """
    return _compiled_mala_correction(rng_key, whitening, logdensity_fn, xs, num_steps)


def correct_draws(
    rng_key: PRNGKeyArray,
    draws: Draws,
    num_draws: int,
    correction: str | None,
    whitening: AffineWhitening,
    logdensity_fn: Callable,
    num_mcmc_steps: int,
) -> tuple[Draws, dict]:
    """Apply ``correction`` to a pool of weighted draws, keeping ``num_draws``.

    Args:
        rng_key: PRNG key.
        draws: the pool, with finite or ``-inf`` log weights.
        num_draws: draws to keep (the pool itself without a correction).
        correction: one of :data:`CORRECTIONS`.
        whitening: the sampler's whitening.
        logdensity_fn: the target's log density of one flat unconstrained vector.
        num_mcmc_steps: MALA steps per draw with ``"mcmc"``.

    Returns:
        The corrected draws (resampled: each keeps its ``log_q`` and ``log_weight``;
        moved: ``x`` and ``lp`` are the moved draw's) and, with ``"mcmc"``, the
        moves' acceptance rate, median step size and gradient evaluations.
    """
    check_correction(correction)
    if correction is None:
        return draws, {}
    resample_key, move_key = jax.random.split(rng_key)
    index = psis_resample(resample_key, draws.log_weight, num_draws)
    draws = jax.tree.map(lambda a: a[index], draws._replace(step_signs=None))
    if correction == "resample":
        return draws, {}
    xs, lp, info = mala_correction(
        move_key, whitening, logdensity_fn, draws.x, num_mcmc_steps
    )
    return draws._replace(x=xs, lp=lp), {
        "acceptance_rate": float(info.acceptance_rate),
        "step_size": float(jax.numpy.median(info.step_size)),
        "gradient_evaluations": int(info.gradient_evaluations),
    }


def checked_draws(
    rng_key: PRNGKeyArray,
    trained: TrainedSampler,
    logdensity_fn: Callable,
    num_draws: int,
    num_steps: int,
    stacklevel: int,
) -> Draws:
    """Weighted draws of ``trained``, with the user warned of what spoils the weights.

    A draw whose model log density is NaN gets weight zero, and a flow step that
    folds space is named (:class:`~numpyro_cds.report.UnreliableDrawsWarning`);
    ``stacklevel`` is the caller's frame, as for :func:`warnings.warn`.
    """
    draws = trained.sample(rng_key, logdensity_fn, num_draws, num_steps, True)
    log_weight = checked_log_weights(draws.log_weight, stacklevel + 1)
    exact = trained.weights_are_exact
    warn_if_folded(draws.step_signs, num_steps, exact, stacklevel=stacklevel + 1)
    return draws._replace(log_weight=log_weight)


def draw_and_correct(
    rng_key: PRNGKeyArray,
    trained: TrainedSampler,
    logdensity_fn: Callable,
    num_draws: int,
    num_steps: int,
    correction: str | None,
    pool: int,
    num_mcmc_steps: int,
) -> tuple[Draws, ImportanceSummary, dict]:
    """``num_draws`` corrected draws from a pool of ``pool * num_draws`` weighted ones.

    Without a correction the pool is the ``num_draws`` draws themselves.  The summary
    is the pool's weights' (before any correction); a Pareto k-hat above the
    threshold warns (:func:`~numpyro_cds.report.warn_if_unreliable`).

    Returns:
        The draws, the :class:`~numpyro_cds.importance.ImportanceSummary` of the
        pool and the correction's information (see :func:`correct_draws`); with
        ``"auto"`` it names the correction applied (``"applied"``) and ``"why"``.
    """
    draw_key, correct_key = jax.random.split(rng_key)
    size = num_draws * (1 if correction is None else pool)
    draws = checked_draws(draw_key, trained, logdensity_fn, size, num_steps, 4)
    summary = summarize_weights(draws.log_weight)
    chosen = {}
    if correction == "auto":
        correction, why = auto_correction(summary, num_draws)
        chosen = {"applied": correction, "why": why}
    description = draws_description(num_steps, trained.sampling)
    warn_if_unreliable(summary, description, correction, stacklevel=4)
    draws, info = correct_draws(
        correct_key,
        draws,
        num_draws,
        correction,
        trained.whitening,
        logdensity_fn,
        num_mcmc_steps,
    )
    return draws, summary, info | chosen
