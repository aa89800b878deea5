"""What ``CDSInference`` tells the user: warnings about the draws, the summary lines."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np

from .flow import folded_steps
from .importance import KHAT_THRESHOLD, ImportanceSummary
from .monitor import Snapshot

__all__ = [
    "UnreliableDrawsWarning",
    "TrainingDivergedWarning",
    "checked_log_weights",
    "draws_description",
    "summary_text",
    "warn_if_folded",
    "warn_if_unreliable",
]


class UnreliableDrawsWarning(UserWarning):
    """The importance weights say the draws and the log Z estimate are unreliable."""


class TrainingDivergedWarning(UserWarning):
    """Training diverged; it was stopped and its best snapshot kept."""


def checked_log_weights(log_weight, stacklevel: int = 4):
    """Turn NaN log weights (NaN model log density) into zero weights, warning."""
    nan = jnp.isnan(log_weight)
    if bool(jnp.any(nan)):
        warnings.warn(
            f"{int(jnp.sum(nan))} draws have a NaN model log density; they get "
            "importance weight zero. Check the model where it is undefined.",
            UnreliableDrawsWarning,
            stacklevel=stacklevel,
        )
    return jnp.where(nan, -jnp.inf, log_weight)


def draws_description(num_steps: int, sampling: str) -> str:
    """E.g. ``"1-step probability-flow draws"``."""
    kind = "Euler-Maruyama" if sampling == "sde" else "probability-flow"
    return f"{num_steps}-step {kind} draws"


def warn_if_folded(step_signs, num_steps: int, exact_flow: bool, stacklevel: int = 4):
    """Warn when a flow step folds space (its weights are then not exact).

    Path weights are exact whatever the steps do; flow weights need invertibility,
    checked only where the log-determinants are exact (their signs are known).
    """
    folds = folded_steps(step_signs) if exact_flow else []
    if folds:
        warnings.warn(
            f"Flow steps {folds} of {num_steps} fold space (their Jacobian "
            "determinant changes sign between draws), so the importance weights "
            "are not exact. Draw with more steps or train longer.",
            UnreliableDrawsWarning,
            stacklevel=stacklevel,
        )


def warn_if_unreliable(
    summary: ImportanceSummary, description: str, correction, stacklevel: int = 4
):
    """Warn when the weights are not reliable (Pareto k-hat above the threshold).

    See :attr:`~numpyro_cds.importance.ImportanceSummary.reliable`.
    """
    if not summary.reliable:
        advice = (
            "raise correction_steps: the corrected draws depend on the MCMC "
            "moves to fix what the sampler misses"
            if correction == "mcmc"
            else "use correction='mcmc'"
        )
        warnings.warn(
            f"Pareto k-hat of the importance weights is {summary.pareto_k:.2f} > "
            f"{KHAT_THRESHOLD}: the {description} and the log Z estimate are not "
            "reliable. Train longer (num_train_steps), draw with more steps "
            f"(num_steps), or {advice}.",
            UnreliableDrawsWarning,
            stacklevel=stacklevel,
        )


def summary_text(
    *,
    iterations: int,
    seconds: float,
    losses: dict,
    loss_name: str,
    chunk_size: int,
    snapshot: Snapshot,
    description: str,
    summary: ImportanceSummary,
    weights_kind: str,
    correction,
    correction_steps: int,
    correction_info: dict,
    teacher: tuple[str, int, float] | None = None,
    stopped: dict[str, str] | None = None,
) -> str:
    """The lines ``print_summary`` prints after NumPyro's table.

    The final loss is the mean ``loss_name`` loss of the last chunk, as the progress
    bar shows it; the weights' ESS is the normalised one, a fraction of the draws
    (NumPyro's ``n_eff`` above counts draws).  ``teacher``: the method, iterations and
    seconds of the teacher a distillation trained first.  ``stopped``: why trainings
    ended before their last iteration (keys ``"teacher_training"``, ``"training"``).
    """
    tail = losses.get(loss_name, np.array([]))[-chunk_size:]
    verdict = "ok" if summary.reliable else "unreliable"
    if summary.reliable and summary.pareto_k > KHAT_THRESHOLD:
        verdict = (
            f"ok: every weight within {summary.max_weight_ratio:.3f} times their "
            "mean, so the tail fit is moot"
        )
    trained = f"{iterations} training iterations ({seconds:.1f} s)"
    if teacher is not None:
        method, teacher_iterations, teacher_seconds = teacher
        trained = (
            f"a {method} teacher trained for {teacher_iterations} iterations "
            f"({teacher_seconds:.1f} s), then {iterations} distillation iterations "
            f"({seconds:.1f} s)"
        )
    if tail.size:  # a warm start may need no training (no losses)
        trained += (
            f", final {loss_name.replace('_', ' ')} {np.nanmean(tail):.4g} (mean of "
            f"the last {len(tail)} iterations, as on the progress bar)"
        )
    lines = [
        f"CDS: {trained}; drawing with the "
        f"snapshot of iteration {snapshot.iteration} (held-out Renyi-1/2 divergence "
        f"{snapshot.divergence:.3g}); {description}.",
        f"Importance weights ({summary.num_draws} draws, {weights_kind}): log Z = "
        f"{summary.log_evidence:.4f} +- {summary.standard_error:.4f}, ELBO "
        f"{summary.elbo:.4f}, ESS {summary.ess:.3f} of the draws "
        f"({summary.ess * summary.num_draws:.0f} effective), Pareto k-hat "
        f"{summary.pareto_k:.2f} ({verdict})"
        + ("." if correction is None else ", draws resampled."),
    ]
    names = {"teacher_training": "the teacher", "training": "the sampler"}
    for key, reason in (stopped or {}).items():
        lines.append(f"Training of {names[key]} {reason}.")
    if "applied" in correction_info:
        correction = correction_info["applied"]
        lines.append(
            f"Correction 'auto': {correction} ({correction_info['why']})"
            + (", MALA moves follow." if correction == "mcmc" else ".")
        )
    if correction == "mcmc":
        lines.append(
            f"MCMC correction: {correction_steps} MALA steps per draw, acceptance "
            f"{correction_info['acceptance_rate']:.2f}, "
            f"{correction_info['gradient_evaluations']} gradient evaluations."
        )
    return "\n".join(lines)
