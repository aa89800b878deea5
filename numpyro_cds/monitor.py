"""Watching a training run: held-out scores, the best snapshot, divergence.

Training the consistency sampler longer does not always make its few-step draws
better (``docs/design.rst``, "Training monitor"), and a training can diverge (the loss
jumps by orders of magnitude, or most paths leave the loss).  After every chunk of
iterations :class:`TrainingMonitor` scores the EMA weights on a fixed held-out batch
of draws by an estimate of the **Renyi divergence of order 1/2** between the draws'
density ``q`` and the posterior ``p``, from their exact importance weights ``w``:

``D_1/2 = -2 log BC(p, q)``, with the Bhattacharyya coefficient
``BC = int sqrt(p q) = E_q[sqrt(w)] / sqrt(E_q[w])``

(``log Z`` cancels).  It is symmetric in ``p`` and ``q`` (``1 - BC`` is the squared
Hellinger distance), so it punishes a sampler that is too narrow and one that is too
wide.  Its main term, the mean of ``sqrt(w)``, has finite variance whatever the
sampler (``E_q[(sqrt w)^2] = Z``); the largest weights enter only through the ``log Z``
normaliser, so it is less at their mercy than the ESS or a KL estimate.  A draw
thrown far outside the posterior costs in proportion to its share of the draws, not to
how far it went.  The snapshot with the smallest
divergence is kept, and the training is stopped with a diagnosis when it diverges.  The
snapshot before any training, the whitening Gaussian (the flow of an untrained network
is the identity), is scored too, so the sampler handed back is never worse than that
starting point on this score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = ["MonitorConfig", "Snapshot", "TrainingMonitor", "renyi_half_divergence"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonitorConfig:
    """Settings of the training monitor.

    Attributes:
        num_draws: held-out draws scored after every chunk (one fixed key).
        keep_best: hand back the best-scoring snapshot; False keeps the last one
            (the divergence check still stops a diverging run).
        divergence_factor: a chunk whose median diffusion loss exceeds this multiple
            of the lowest chunk median so far counts as diverging.
        min_kept_fraction: a chunk whose median fraction of paths kept in the loss
            falls below this counts as diverging.
        patience: consecutive diverging chunks that stop the training.
        plateau_iterations: with ``num_train_steps="auto"``, the training stops when
            the held-out divergence has not fallen below ``1 - plateau_tolerance``
            times its last mark for this many iterations.  The mark is the first
            snapshot's divergence, moved to every snapshot that beats it by that
            factor.
        plateau_tolerance: the relative improvement that moves the mark.
    """

    num_draws: int = 512
    keep_best: bool = True
    divergence_factor: float = 1e3
    min_kept_fraction: float = 0.5
    patience: int = 2
    plateau_iterations: int = 500
    plateau_tolerance: float = 0.1

    def __post_init__(self):
        for name in ("num_draws", "patience", "plateau_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not self.divergence_factor > 1:
            raise ValueError(
                f"divergence_factor must exceed 1, got {self.divergence_factor}."
            )
        if not 0 <= self.min_kept_fraction < 1:
            raise ValueError("min_kept_fraction must lie in [0, 1).")
        if not 0 < self.plateau_tolerance < 1:
            raise ValueError(
                f"plateau_tolerance must lie in (0, 1), got {self.plateau_tolerance}."
            )


class Snapshot(NamedTuple):
    """A scored set of EMA weights.

    Attributes:
        iteration: training iterations done when it was taken.
        divergence: held-out estimate of the Renyi-1/2 divergence
            (:func:`renyi_half_divergence`; ``inf`` if a weight was NaN or ``+inf``,
            or every weight was zero).
        params: the weights.
    """

    iteration: int
    divergence: float
    params: Any


def renyi_half_divergence(log_weights) -> float:
    """Renyi divergence of order 1/2 between ``q`` and ``p``, from importance weights.

    ``-2 log mean(sqrt(w)) + log mean(w)`` for draws from ``q`` with log weights
    ``log w = log p~ - log q`` (any normalisation of ``p~``): ``-2 log`` of the
    Bhattacharyya coefficient of ``p`` and ``q``.  Zero when all weights are equal.  A
    draw outside the target's support (log weight ``-inf``) counts as a zero weight;
    ``inf`` if a log weight is NaN or ``+inf``, or all are ``-inf``.

    Example:
        >>> renyi_half_divergence([0.0, 0.0, 0.0])
        0.0
        >>> round(renyi_half_divergence([0.0, -float("inf")]), 4)
        0.6931
    """
    log_weights = np.asarray(log_weights, np.float64)
    if np.any(np.isnan(log_weights)) or np.any(log_weights == np.inf):
        return np.inf
    top = np.max(log_weights)
    if top == -np.inf:
        return np.inf
    shifted = log_weights - top
    log_mean_root = np.log(np.mean(np.exp(0.5 * shifted)))
    log_mean = np.log(np.mean(np.exp(shifted)))
    return float(max(log_mean - 2.0 * log_mean_root, 0.0))


class TrainingMonitor:
    """Scores snapshots, keeps the best, detects a diverging training.

    Args:
        score_fn: ``params -> log weights`` of the held-out draws (a jitted function
            with a fixed key, so every snapshot is scored on the same prior draws).
        config: the monitor's settings.
        best: a snapshot to start from (a resumed run's).
        loss_floor: the lowest chunk median of the loss so far (a resumed run's).
        mark: ``(iteration, divergence)`` of the plateau mark (a resumed run's).
        loss_name: the field of the training info whose jumps count as diverging.

    Example:
        >>> import numpy as np
        >>> monitor = TrainingMonitor(lambda p: np.array([0.0, p]), MonitorConfig())
        >>> monitor.observe(0, 3.0, None)
        >>> monitor.observe(50, 1.0, {"diffusion_loss": np.ones(50)})
        >>> monitor.best.iteration, round(monitor.best.divergence, 4)
        (50, 0.0583)
    """

    def __init__(
        self,
        score_fn: Callable,
        config: MonitorConfig,
        best: Snapshot | None = None,
        loss_floor: float = np.inf,
        loss_name: str = "diffusion_loss",
        mark: tuple[int, float] | None = None,
    ):
        self.score_fn = score_fn
        self.mark = mark
        self.loss_name = loss_name
        self.config = config
        self.best = best
        self.latest: Snapshot | None = None
        self.loss_floor = loss_floor
        self.diverging_chunks = 0
        self.diagnosis: str | None = None

    def observe(self, iteration: int, params, info: dict | None) -> None:
        """Score the snapshot after a chunk and check the chunk's losses.

        Args:
            iteration: iterations done.
            params: the EMA weights.
            info: the chunk's per-iteration losses (``loss_name``) and
                ``kept_fraction`` (None before training).
        """
        divergence = renyi_half_divergence(self.score_fn(params))
        snapshot = Snapshot(iteration, divergence, params)
        self.latest = snapshot
        if self.best is None or snapshot.divergence < self.best.divergence:
            self.best = snapshot
        threshold = 1.0 - self.config.plateau_tolerance
        if self.mark is None or divergence < threshold * self.mark[1]:
            self.mark = (iteration, divergence)
        if info is not None:
            self._check_divergence(iteration, info)

    def _check_divergence(self, iteration: int, info: dict) -> None:
        losses = np.asarray(info[self.loss_name], np.float64)
        finite = losses[np.isfinite(losses)]
        median = float(np.median(finite)) if finite.size else np.inf
        kept = np.asarray(info.get("kept_fraction", np.ones(1)), np.float64)
        kept_median = float(np.nanmedian(kept)) if np.any(np.isfinite(kept)) else 0.0
        reason = None
        if finite.size < losses.size / 2:
            reason = f"{losses.size - finite.size} of {losses.size} losses not finite"
        elif median > self.config.divergence_factor * self.loss_floor:
            reason = (
                f"median loss {median:.3g}, {median / self.loss_floor:.2g} times its "
                f"lowest chunk median {self.loss_floor:.3g}"
            )
        elif kept_median < self.config.min_kept_fraction:
            reason = f"only {kept_median:.0%} of the paths kept in the loss"
        if reason is None:
            self.diverging_chunks = 0
            self.loss_floor = min(self.loss_floor, median)
            return
        self.diverging_chunks += 1
        if self.diverging_chunks >= self.config.patience:
            self.diagnosis = f"training diverged by iteration {iteration}: {reason}"

    def plateau(self, iteration: int) -> str | None:
        """Why an ``"auto"`` training stopped improving by ``iteration`` (or None)."""
        since = iteration - self.mark[0]
        if since < self.config.plateau_iterations:
            return None
        return (
            f"held-out divergence {self.latest.divergence:.3g}: no "
            f"{self.config.plateau_tolerance:.0%} improvement on "
            f"{self.mark[1]:.3g} (iteration {self.mark[0]}) in {since} iterations"
        )

    @property
    def stop(self) -> bool:
        """Whether the training should stop (it diverged)."""
        return self.diagnosis is not None

    def chosen(self, keep_best: bool | None = None) -> Snapshot:
        """The snapshot to draw with: the best, or the last one.

        Args:
            keep_best: override of ``config.keep_best``.

        A diverged run hands back the best snapshot either way.
        """
        keep_best = self.config.keep_best if keep_best is None else keep_best
        if keep_best or self.stop or self.latest is None:
            return self.best
        return self.latest
