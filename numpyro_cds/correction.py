"""The correction of a sampler's draws: importance resampling, then MALA moves.

``correction="resample"`` resamples the pool of draws by their Pareto-smoothed
importance weights (:func:`~numpyro_cds.importance.psis_resample`); ``"mcmc"`` then
moves every resampled draw by a short MALA chain in the whitened space
(:func:`~numpyro_cds.mcmc.mala_move`), which leaves the target invariant.  The moves
are compiled once per target and shape: a second ``run`` with the same settings does
not compile again.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .importance import psis_resample
from .mcmc import MALAInfo, mala_move
from .trained import Draws
from .whitening import AffineWhitening

__all__ = ["CORRECTIONS", "correct_draws", "mala_correction"]

#: What ``correction`` may be: no correction, resampling, resampling and MALA moves.
CORRECTIONS = (None, "resample", "mcmc")


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
    if correction not in CORRECTIONS:
        raise ValueError(
            f"correction must be one of {CORRECTIONS}; got {correction!r}."
        )
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
