"""``CDSInference``: the stateful, MCMC-like driver.

It mirrors :class:`numpyro.infer.MCMC` (and subclasses it, so that
``arviz.from_numpyro``, :class:`~numpyro.infer.Predictive` and ``print_summary`` work
unchanged): ``run`` trains the sampler (the analogue of warm-up, in a
:class:`~numpyro_cds.session.TrainingSession`), draws with the
:class:`~numpyro_cds.trained.TrainedSampler` and corrects the draws
(:mod:`numpyro_cds.correction`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .arguments import as_key, check_count, frozen_arguments, with_overrides
from .checkpoint import arguments_fingerprint
from .consistency import ConsistencyConfig
from .correction import CORRECTIONS, correct_draws
from .importance import ImportanceSummary, summarize_weights
from .monitor import MonitorConfig, Snapshot
from .report import (
    TrainingDivergedWarning,
    UnreliableDrawsWarning,
    checked_log_weights,
    draws_description,
    warn_if_folded,
    warn_if_unreliable,
)
from .results import MCMCResults
from .session import (
    LoadedSession,
    Settings,
    TrainingSession,
    read_saved_settings,
    save_session,
)
from .target import Target
from .train import TrainConfig
from .trained import EXACT_LOG_DET_MAX_DIM, TrainedSampler
from .whitening import AffineWhitening

__all__ = [
    "CDSInference",
    "UnreliableDrawsWarning",
    "TrainingDivergedWarning",
    "EXACT_LOG_DET_MAX_DIM",
    "EXTRA_FIELDS",
]

#: Extra fields of every draw: the log density, the sampler's log density, the
#: importance log weight and the (always False) divergence flag that ArviZ reads.
EXTRA_FIELDS = ("lp", "log_q", "log_weight", "diverging")


class _Sampler(NamedTuple):
    """What ArviZ reads as ``posterior.sampler``."""

    model: Callable


class CDSInference(MCMCResults):
    """Consistent diffusion sampler for a NumPyro model, used like ``MCMC``.

    ``run`` fits a whitening, trains a self-consistent diffusion sampler (SCDS) on the
    model's unconstrained posterior, then draws ``num_chains * num_samples``
    independent samples with ``num_steps`` network evaluations each, and corrects
    them (:mod:`numpyro_cds.correction`).  Every draw carries its importance log
    weight (extra field ``log_weight``), from which come :meth:`log_evidence`, the ESS
    and the Pareto k-hat of :meth:`print_summary`; a k-hat above 0.7 raises an
    :class:`~numpyro_cds.report.UnreliableDrawsWarning` (:doc:`/weights`).  On a GPU
    raise ``batch_size`` (1024), ``num_sde_steps`` (128) and ``num_train_steps``.

    Args:
        model: the NumPyro model.
        num_samples: draws per chain.
        num_chains: "chains" of independent draws, grouped like MCMC output.
        num_steps: steps per draw (1, 2, 4, ..., ``num_sde_steps``).
        sampling: ``"flow"`` (probability-flow steps, change-of-variables weights) or
            ``"sde"`` (Euler-Maruyama steps, path weights: informative only at many
            steps; :doc:`/weights`).
        num_train_steps: training iterations (overrides ``train``'s).
        batch_size: paths per training iteration (overrides ``consistency``'s).
        num_sde_steps: steps of the training paths, a power of 2 (overrides
            ``consistency``'s).
        learning_rate: initial Adam learning rate (overrides ``train``'s).
        whitening: ``"auto"`` (fit a Gaussian approximation first), None (identity)
            or ``(loc, scale)``, scalars or arrays over the flat unconstrained vector.
        consistency: the sampler's settings (:class:`~numpyro_cds.consistency.
            ConsistencyConfig`).
        train: the optimisation's settings (:class:`~numpyro_cds.train.TrainConfig`).
        monitor: the training monitor's settings (:class:`~numpyro_cds.monitor.
            MonitorConfig`): the held-out snapshot that draws, and the divergence
            stop (:class:`~numpyro_cds.report.TrainingDivergedWarning`).
        chunk_size: iterations per compiled chunk (overrides ``train``'s).
        checkpoint: a file written after every chunk; a later ``run`` with the same
            arguments, settings and key resumes from it (any other is refused, each
            difference named).  JSON and ``.npy``: reading it never runs code.
        optimizer: an optax transformation used for both updates of an iteration
            instead of :func:`~numpyro_cds.train.default_optimizer` (a checkpoint
            cannot tell two custom optimizers apart: resume with the same one).
        progress_bar: show a tqdm bar with the loss and the monitor's score.
        correction: ``"mcmc"`` (PSIS resampling, then ``correction_steps`` MALA steps
            per draw), ``"resample"`` or None (the sampler's own draws).
            :meth:`sample` always returns uncorrected draws.
        correction_steps: MALA steps per draw with ``"mcmc"``.
        correction_pool: with a correction, this many times ``num_chains *
            num_samples`` draws are resampled down to that number.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(1.0, 2.0))
        >>> cds = CDSInference(model, num_samples=100, num_train_steps=20,
        ...                    batch_size=16, num_sde_steps=4, progress_bar=False)
        >>> cds.run(jax.random.key(0))
        >>> cds.get_samples()["x"].shape
        (100,)
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_samples: int = 1000,
        num_chains: int = 1,
        num_steps: int = 1,
        sampling: str = "flow",
        num_train_steps: int | None = None,
        batch_size: int | None = None,
        num_sde_steps: int | None = None,
        learning_rate: float | None = None,
        whitening: str | tuple | None = "auto",
        consistency: ConsistencyConfig | None = None,
        train: TrainConfig | None = None,
        monitor: MonitorConfig | None = None,
        chunk_size: int | None = None,
        checkpoint: str | os.PathLike | None = None,
        optimizer: optax.GradientTransformation | None = None,
        progress_bar: bool = True,
        correction: str | None = "mcmc",
        correction_steps: int = 1000,
        correction_pool: int = 4,
    ):
        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {model!r}.")
        self.sampler = _Sampler(model)
        self.num_samples = check_count("num_samples", num_samples)
        self.num_chains = check_count("num_chains", num_chains)
        self.num_warmup = 0
        self.thinning = 1
        self.progress_bar = bool(progress_bar)
        self.consistency = with_overrides(
            ConsistencyConfig() if consistency is None else consistency,
            batch_size=batch_size,
            num_sde_steps=num_sde_steps,
        )
        self.train_config = with_overrides(
            TrainConfig() if train is None else train,
            num_train_steps=num_train_steps,
            learning_rate=learning_rate,
            chunk_size=chunk_size,
        )
        self.monitor_config = MonitorConfig() if monitor is None else monitor
        self.num_steps = self._check_num_steps(num_steps)
        self.sampling, self.whitening_spec = sampling, whitening
        self.settings  # noqa: B018 (validates sampling and whitening)
        if correction not in CORRECTIONS:
            raise ValueError(
                f"correction must be one of {CORRECTIONS}; got {correction!r}."
            )
        self.correction = correction
        self.correction_steps = check_count("correction_steps", correction_steps)
        self.correction_pool = check_count("correction_pool", correction_pool)
        self.correction_info: dict = {}
        self.weights_summary: ImportanceSummary | None = None
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.optimizer = optimizer
        self._args: tuple = ()
        self._kwargs: dict = {}
        self._fingerprint: str | None = None
        self._load_path: str | None = None
        self._session: TrainingSession | LoadedSession | None = None
        self._samples = None
        self._extra_fields = None

    def _check_num_steps(self, num_steps) -> int:
        num_steps = check_count("num_steps", num_steps)
        n = self.consistency.num_sde_steps
        if num_steps & (num_steps - 1) or num_steps > n:
            raise ValueError(
                f"num_steps must be a power of two no larger than num_sde_steps={n} "
                f"(1, 2, 4, ..., {n}); got {num_steps}."
            )
        return num_steps

    @property
    def settings(self) -> Settings:
        """Every setting that changes the trained sampler, as one value."""
        return Settings(
            consistency=self.consistency,
            train=self.train_config,
            monitor=self.monitor_config,
            whitening=self.whitening_spec,
            sampling=self.sampling,
            num_steps=self.num_steps,
        )

    def _session_matches(self, args, kwargs) -> bool:
        """Whether the session was made for these arguments and settings.

        The arguments' contents decide (data changed in place is new data); the
        monitor's ``keep_best`` is read at each draw and changes nothing trained.
        """
        if self._session is None:
            return False
        if self._fingerprint != arguments_fingerprint(args, kwargs):
            return False
        if self._load_path is not None:
            return True
        mine, theirs = self.settings.to_json(), self._session.settings.to_json()
        for settings in (mine, theirs):
            settings["monitor"].pop("keep_best")
        return mine == theirs

    # ----------------------------------------------------------------- training
    def warmup(self, rng_key, *args, **kwargs) -> None:
        """Fit the whitening and train the sampler (NumPyro's warm-up analogue).

        Training for the same model arguments and settings resumes where it stopped:
        if it was interrupted (Ctrl-C), calling ``warmup`` or ``run`` again continues
        from the last completed chunk and gives the same result as an uninterrupted
        run.  Other arguments or settings start a new training.
        """
        rng_key = as_key(rng_key)
        args, kwargs = frozen_arguments(args, kwargs)
        if not self._session_matches(args, kwargs):
            self._session = None
            if self._load_path is not None:
                self._session = LoadedSession(
                    rng_key, self.sampler.model, args, kwargs, self._load_path
                )
            else:
                self._session = TrainingSession(
                    rng_key,
                    self.sampler.model,
                    args,
                    kwargs,
                    self.settings,
                    self.optimizer,
                    self.checkpoint,
                )
            self._args, self._kwargs = args, kwargs
            self._fingerprint = arguments_fingerprint(args, kwargs)
        diagnosis = self._session.train(self.progress_bar)
        if diagnosis is not None:
            warnings.warn(diagnosis, TrainingDivergedWarning, stacklevel=2)

    def _require_session(self):
        if self._session is None:
            raise RuntimeError("Call run(rng_key, *args, **kwargs) first.")
        return self._session

    @property
    def target(self) -> Target:
        """The flat unconstrained target of the last run."""
        return self._require_session().target

    @property
    def whitening(self) -> AffineWhitening:
        """The whitening map of the last run."""
        return self._require_session().whitening

    @property
    def is_trained(self) -> bool:
        """Whether training for the current model arguments has finished.

        A training that diverged and was stopped counts as finished, and so does a
        sampler read by :meth:`load`.
        """
        return self._session is not None and self._session.is_trained

    @property
    def training_iterations(self) -> int:
        """Training iterations done so far."""
        return self._require_session().iterations

    @property
    def training_losses(self) -> dict[str, np.ndarray]:
        """Per-iteration training diagnostics (see :doc:`/getting_started`)."""
        return {} if self._session is None else self._session.losses

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent on the whitening fit, the training and the last draws."""
        return {} if self._session is None else self._session.timings

    @property
    def snapshot(self) -> Snapshot:
        """The EMA weights that draw: the monitor's choice (see ``monitor``).

        ``monitor_config.keep_best`` is read at each draw, so setting
        ``cds.monitor_config = MonitorConfig(keep_best=False)`` after training draws
        with the last snapshot instead of the best, without retraining.
        """
        return self._require_session().snapshot(self.monitor_config.keep_best)

    @property
    def trained(self) -> TrainedSampler:
        """The sampler that draws, as one value (of :attr:`snapshot`)."""
        return self._require_session().trained(self.monitor_config.keep_best)

    @property
    def log_det_method(self) -> str:
        """How log-determinants are computed: ``"exact"`` or ``"stochastic"``."""
        return self.trained.log_det_method

    # --------------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike) -> None:
        """Write the trained sampler to ``path`` (a JSON header and ``.npy`` arrays).

        The file holds :attr:`trained`, every setting, the unconstrained sites'
        names and shapes, and a fingerprint of the model arguments; :meth:`load`
        reads it back for the same model and data and draws exactly what this object
        draws.  It is never a pickle: reading it runs no code.
        """
        self._require_trained()
        keep_best = self.monitor_config.keep_best
        args = (self._args, self._kwargs)
        save_session(os.fspath(path), self._session, keep_best, *args)

    #: Settings a loaded sampler accepts: what happens after training.
    _LOAD_KEYWORDS = (
        "num_samples",
        "num_chains",
        "num_steps",
        "progress_bar",
        "correction",
        "correction_steps",
        "correction_pool",
    )

    @classmethod
    def load(cls, path: str | os.PathLike, model: Callable, **kwargs) -> CDSInference:
        """A ``CDSInference`` that draws with the sampler saved at ``path``.

        Its ``run(rng_key, *args, **kwargs)`` checks that the model's unconstrained
        sites and the arguments are those the sampler was trained for (refusing any
        difference, named) and draws without training; with the key of the original
        ``run`` it gives the same draws.

        Args:
            path: a file written by :meth:`save`.
            model: the NumPyro model it was trained for.
            **kwargs: drawing settings (``num_samples``, ``num_chains``,
                ``num_steps``, ``progress_bar``, ``correction``, ``correction_steps``,
                ``correction_pool``); the others come from the file.

        Raises:
            TypeError: a training setting among ``kwargs``.
            ValueError: not a saved sampler, or a damaged file.
        """
        path = os.fspath(path)
        training = sorted(set(kwargs) - set(cls._LOAD_KEYWORDS))
        if training:
            raise TypeError(
                f"CDSInference.load takes drawing settings only "
                f"{list(cls._LOAD_KEYWORDS)}; {training} are training settings, "
                "fixed by the saved sampler. Train a new CDSInference to change them."
            )
        settings = read_saved_settings(path)
        cds = cls(
            model,
            sampling=settings.sampling,
            whitening=settings.whitening,
            consistency=settings.consistency,
            train=settings.train,
            monitor=settings.monitor,
            **{"num_steps": settings.num_steps, **kwargs},
        )
        cds._load_path = path
        return cds

    # ----------------------------------------------------------------- sampling
    def _draw_flat(self, rng_key, num_samples: int, num_steps: int, weights: bool):
        """Flat draws of :attr:`trained` (see :meth:`TrainedSampler.sample`)."""
        logdensity = self.target.logdensity_fn
        return self.trained.sample(rng_key, logdensity, num_samples, num_steps, weights)

    def _constrain(self, xs):
        return jax.vmap(self.target.postprocess_fn)(xs)

    def _description(self, num_steps=None) -> str:
        return draws_description(num_steps or self.num_steps, self.sampling)

    def sample(
        self,
        rng_key,
        num_samples: int,
        num_steps: int | None = None,
        log_weights: bool = False,
    ):
        """Draw more samples from the trained sampler, without retraining.

        The draws are the sampler's own (``num_steps`` network evaluations each), not
        corrected: weight them with ``log_weights=True`` or use :meth:`run`, which
        applies ``correction``.

        Args:
            rng_key: PRNG key.
            num_samples: number of draws.
            num_steps: steps per draw (default: ``self.num_steps``), probability-flow
                or Euler-Maruyama steps as set by ``sampling``.
            log_weights: also return each draw's importance log weight (see
                :attr:`log_det_method`; with ``sampling="sde"`` the path weight).

        Returns:
            Dict of constrained latent and deterministic sites, leading axis
            ``num_samples``; with ``log_weights=True``, the pair ``(samples,
            log_weights)``, where a draw whose model log density is NaN gets weight
            zero (log weight ``-inf``), with an
            :class:`~numpyro_cds.report.UnreliableDrawsWarning`; a flow step that
            folds space (see :func:`~numpyro_cds.flow.folded_steps`) also raises one.
        """
        self._require_trained()
        num_samples = check_count("num_samples", num_samples)
        num_steps = (
            self.num_steps if num_steps is None else self._check_num_steps(num_steps)
        )
        draws = self._draw_flat(as_key(rng_key), num_samples, num_steps, log_weights)
        samples = self._constrain(draws.x)
        if not log_weights:
            return samples
        exact = self.trained.weights_are_exact
        warn_if_folded(draws.step_signs, num_steps, exact, stacklevel=3)
        return samples, checked_log_weights(draws.log_weight, stacklevel=3)

    def _require_trained(self):
        if not self.is_trained:
            raise RuntimeError(
                "The sampler is not trained: call run(rng_key, *args, **kwargs) first "
                "(or again, to finish an interrupted training)."
            )

    def run(self, rng_key, *args, extra_fields=(), init_params=None, **kwargs) -> None:
        """Train the sampler (unless already trained for these arguments), then draw.

        Args:
            rng_key: PRNG key (new-style or legacy).
            *args: positional arguments of the model.
            extra_fields: as for ``MCMC.run``: names among
                :data:`EXTRA_FIELDS`, which are always collected (this argument only
                checks the names; it is not passed to the model).
            init_params: not supported (the draws are independent, there are no
                chains to start); must be None.
            **kwargs: keyword arguments of the model.

        Raises:
            ValueError: an unknown extra field, or ``init_params`` given.
        """
        unknown = sorted(set(extra_fields) - set(EXTRA_FIELDS))
        if unknown:
            raise ValueError(
                f"CDSInference has no extra fields {unknown}; it collects "
                f"{list(EXTRA_FIELDS)} for every draw (get_extra_fields())."
            )
        if init_params is not None:
            raise ValueError(
                "CDSInference takes no init_params: its draws are independent, not "
                "chains started somewhere. To tell it where the posterior is, pass "
                "whitening=(loc, scale) in the unconstrained space."
            )
        warmup_key, draw_key = jax.random.split(as_key(rng_key))
        self.warmup(warmup_key, *args, **kwargs)
        start = time.perf_counter()
        draw_key, correct_key = jax.random.split(draw_key)
        total = self.num_chains * self.num_samples
        pool = total * (1 if self.correction is None else self.correction_pool)
        draws = self._draw_flat(draw_key, pool, self.num_steps, True)
        draws = draws._replace(log_weight=checked_log_weights(draws.log_weight, 3))
        self.weights_summary = summarize_weights(draws.log_weight)
        description, correction = self._description(), self.correction
        warn_if_unreliable(self.weights_summary, description, correction, 3)
        exact = self.trained.weights_are_exact
        warn_if_folded(draws.step_signs, self.num_steps, exact, stacklevel=3)
        draws, self.correction_info = correct_draws(
            correct_key,
            draws,
            total,
            self.correction,
            self.whitening,
            self.target.logdensity_fn,
            self.correction_steps,
        )
        fields = (draws.lp, draws.log_q, draws.log_weight, jnp.zeros(total, bool))
        self._extra_fields = dict(zip(EXTRA_FIELDS, fields, strict=True))
        self._samples = jax.block_until_ready(self._constrain(draws.x))
        self.timings["sampling"] = time.perf_counter() - start
