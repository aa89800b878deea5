"""``CDSInference``: the stateful driver, used like :class:`numpyro.infer.MCMC`.

``run`` trains the sampler (the analogue of warm-up: a
:class:`~numpyro_cds.session.TrainingSession`), draws with its
:class:`~numpyro_cds.trained.TrainedSampler` and corrects the draws
(:mod:`numpyro_cds.correction`); the results read like ``MCMC``'s
(:mod:`numpyro_cds.results`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence

import jax
import optax

from .arguments import as_key, check_count, frozen_arguments
from .checkpoint import arguments_fingerprint
from .consistency import ConsistencyConfig
from .correction import check_correction, checked_draws, draw_and_correct
from .monitor import MonitorConfig
from .report import TrainingDivergedWarning
from .results import MCMCResults, ModelView
from .session import (
    Settings,
    open_session,
    save_session,
    saved_keywords,
)
from .sharding import batch_mesh
from .train import TrainConfig
from .trained import TrainedSampler

__all__ = ["CDSInference"]

#: The attribute of ``CDSInference`` that holds each field of its ``Settings``.
_SETTING_ATTRIBUTES = {"consistency": "consistency", "train": "train_config"}
_SETTING_ATTRIBUTES |= {"monitor": "monitor_config", "whitening": "whitening_spec"}
_SAME_NAME = ("sampling", "num_steps", "method", "teacher_method")
_SETTING_ATTRIBUTES |= {f: f for f in _SAME_NAME}


class CDSInference(MCMCResults):
    """Consistent diffusion sampler for a NumPyro model, used like ``MCMC``.

    ``run`` fits a whitening, trains a sampler (``method``) on the model's
    unconstrained posterior, then draws ``num_chains * num_samples`` independent
    samples with ``num_steps`` network evaluations each, and corrects them
    (:mod:`numpyro_cds.correction`).  Every draw carries its importance log weight
    (extra field ``log_weight``): :meth:`log_evidence`, the ESS and the Pareto k-hat
    of :meth:`print_summary`, and an :class:`~numpyro_cds.report.
    UnreliableDrawsWarning` above k-hat 0.7 (:doc:`/weights`).

    Args:
        model: the NumPyro model.
        num_samples: draws per chain.
        num_chains: "chains" of independent draws, grouped like MCMC output.
        method: ``"cdds"`` (distils ``teacher``, or trains one first: the
            default), ``"scds"`` (self-consistent, trained from scratch), ``"dis"``
            (the diffusion sampler alone), ``"pis"`` or ``"dds"`` (diffusion samplers
            trained by KL against a reference process): :doc:`/methods`.
        teacher: for ``"cdds"``: ``cds.trained`` of a DIS, SCDS or DDS sampler of
            this model, or the path of one saved with :meth:`save`.
        teacher_method: the teacher ``"cdds"`` trains: ``"dds"`` (None) or ``"dis"``.
        init: a warm start, for a refit on new data: an earlier fit of this model
            with the same method and network (the ``CDSInference`` itself, whose
            CDDS teacher then starts the new teacher too; its ``trained``; or the
            path of one saved with :meth:`save`).  If its importance weights on the
            new posterior are reliable (k-hat <= 0.7) it draws without training;
            otherwise the training starts from its whitening and weights.  Never
            implicit: :doc:`/warm_start`.
        num_steps: steps per draw (1, 2, 4, ..., ``num_sde_steps``); None: the
            method's (``num_sde_steps`` for DIS, PIS and DDS, else 1).
        sampling: ``"flow"`` (probability-flow steps, change-of-variables weights) or
            ``"sde"`` (Euler-Maruyama steps, path weights: informative only at many
            steps; :doc:`/weights`); None: ``"sde"`` for DIS, PIS and DDS (the only
            sampling of PIS and DDS), else ``"flow"``.
        num_train_steps: training iterations, or ``"auto"`` (the default: until the
            held-out score stops improving; :class:`~numpyro_cds.train.TrainConfig`)
            (overrides ``train``'s).
        max_train_steps: the most iterations of an ``"auto"`` training (overrides
            ``train``'s).
        max_time: seconds after which each training stops (overrides ``train``'s).
        batch_size: paths per training iteration (overrides ``consistency``'s).
        num_sde_steps: steps of the training paths, a power of 2 (overrides
            ``consistency``'s).
        learning_rate: initial Adam learning rate (overrides ``train``'s).
        whitening: ``"auto"`` (fit a Gaussian approximation first), None (identity)
            or ``(loc, scale)``, scalars or arrays over the flat unconstrained vector.
        consistency: the sampler (:class:`~numpyro_cds.consistency.ConsistencyConfig`).
        train: the optimisation (:class:`~numpyro_cds.train.TrainConfig`).
        monitor: the training monitor (:class:`~numpyro_cds.monitor.MonitorConfig`):
            the snapshot that draws, the divergence stop.
        chunk_size: iterations per compiled chunk (overrides ``train``'s).
        checkpoint: a file (JSON and ``.npy``, never run) written after every chunk,
            to resume a ``run`` with the same arguments, settings and key.
        optimizer: an optax transformation instead of :func:`~numpyro_cds.train.
            default_optimizer` (resume a checkpoint with the same one).
        progress_bar: show a tqdm bar with the loss and the monitor's score.
        correction: ``"auto"`` (PSIS resampling alone when the weights are
            healthy, else with MALA moves: :func:`~numpyro_cds.correction.
            auto_correction`), ``"mcmc"`` (PSIS resampling, then
            ``correction_steps`` MALA steps per draw), ``"resample"`` or None (the
            sampler's own draws, as :meth:`sample` always returns).
        correction_steps: MALA steps per draw with ``"mcmc"``.
        correction_pool: with a correction, this many times ``num_chains *
            num_samples`` draws are resampled down to that number.
        devices: the devices that share each batch of paths and of draws (None:
            every device ``jax.devices()`` lists, all processes' after
            ``jax.distributed.initialize``): :doc:`/scaling`.

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
        method: str = "cdds",
        teacher: TrainedSampler | str | os.PathLike | None = None,
        teacher_method: str | None = None,
        init: CDSInference | TrainedSampler | str | os.PathLike | None = None,
        num_steps: int | None = None,
        sampling: str | None = None,
        num_train_steps: int | str | None = None,
        max_train_steps: int | None = None,
        max_time: float | None = None,
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
        correction: str | None = "auto",
        correction_steps: int = 1000,
        correction_pool: int = 4,
        devices: Sequence[jax.Device] | None = None,
    ):
        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {model!r}.")
        self.sampler = ModelView(model)
        self.num_samples = check_count("num_samples", num_samples)
        self.num_chains = check_count("num_chains", num_chains)
        self.num_warmup, self.thinning = 0, 1
        self.progress_bar = bool(progress_bar)
        settings = Settings.from_keywords(
            consistency=consistency,
            train=train,
            monitor=monitor,
            whitening=whitening,
            sampling=sampling,
            num_steps=num_steps,
            method=method,
            teacher_method=teacher_method,
            has_teacher=teacher is not None,
            batch_size=batch_size,
            num_sde_steps=num_sde_steps,
            num_train_steps=num_train_steps,
            max_train_steps=max_train_steps,
            max_time=max_time,
            learning_rate=learning_rate,
            chunk_size=chunk_size,
        )
        for field, attribute in _SETTING_ATTRIBUTES.items():
            setattr(self, attribute, getattr(settings, field))
        self.correction = check_correction(correction)
        self.correction_steps = check_count("correction_steps", correction_steps)
        self.correction_pool = check_count("correction_pool", correction_pool)
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.optimizer, self.teacher, self.init = optimizer, teacher, init
        self.devices = None if devices is None else list(devices)
        self._args, self._kwargs, self._load_path = (), {}, None

    @property
    def settings(self) -> Settings:
        """Every setting that changes the trained sampler, as one value."""
        return Settings(**{f: getattr(self, a) for f, a in _SETTING_ATTRIBUTES.items()})

    def warmup(self, rng_key, *args, **kwargs) -> None:
        """Fit the whitening and train the sampler (NumPyro's warm-up analogue).

        An interrupted training (Ctrl-C) resumes from its last completed chunk when
        ``warmup`` or ``run`` is called again with the same arguments and settings,
        with the result of an uninterrupted run.  Other arguments (data changed in
        place are new data) or settings start a new training.
        """
        rng_key = as_key(rng_key)
        args, kwargs = frozen_arguments(args, kwargs)
        fingerprint = arguments_fingerprint(args, kwargs)
        if not (self._session and self._session.serves(fingerprint, self.settings)):
            self._session = None
            self._session = open_session(
                rng_key,
                self.sampler.model,
                args,
                kwargs,
                self.settings,
                self.optimizer,
                self.checkpoint,
                self._load_path,
                self.teacher,
                *_init_networks(self.init),
            )
            self._args, self._kwargs = args, kwargs
        with batch_mesh(self.devices):
            diagnosis = self._session.train(self.progress_bar)
        if diagnosis is not None:
            warnings.warn(diagnosis, TrainingDivergedWarning, stacklevel=2)

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained sampler to ``path`` (a JSON header and ``.npy`` arrays).

        The file holds :attr:`trained`, every setting, the unconstrained sites and
        a fingerprint of the model arguments; :meth:`load` reads it back for the same
        model and data and draws exactly what this object draws.  It is no pickle.
        """
        self._require_trained()
        save_session(os.fspath(path), self._session, self.monitor_config.keep_best)

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
            **kwargs: drawing settings (:data:`~numpyro_cds.session.DRAWING_KEYWORDS`);
                the others come from the file.

        Raises:
            TypeError: a training setting among ``kwargs``.
            ValueError: not a saved sampler, or a damaged file.
        """
        cds = cls(model, **saved_keywords(os.fspath(path), kwargs))
        cds._load_path = os.fspath(path)
        return cds

    def sample(
        self,
        rng_key,
        num_samples: int,
        num_steps: int | None = None,
        log_weights: bool = False,
    ):
        """Draw more samples from the trained sampler, without retraining.

        The sampler's own draws (``num_steps`` network evaluations each), without
        ``correction`` (:meth:`run` applies it); ``log_weights=True`` weighs them.

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
            log_weights)`` (NaN log densities and folding steps warn).
        """
        self._require_trained()
        key, trained = as_key(rng_key), self.trained
        num_steps = self.num_steps if num_steps is None else num_steps
        logdensity_fn = self.target.logdensity_fn
        with batch_mesh(self.devices):
            if not log_weights:
                draws = trained.sample(
                    key, logdensity_fn, num_samples, num_steps, False
                )
                return self._constrain(draws.x)
            draws = checked_draws(
                key, trained, logdensity_fn, num_samples, num_steps, 3
            )
        return self._constrain(draws.x), draws.log_weight

    def run(self, rng_key, *args, extra_fields=(), init_params=None, **kwargs) -> None:
        """Train the sampler (unless already trained for these arguments), then draw.

        Args:
            rng_key: PRNG key (new-style or legacy).
            *args: positional arguments of the model.
            extra_fields: as for ``MCMC.run``: names among
                :data:`~numpyro_cds.results.EXTRA_FIELDS`, which are always
                collected (the names are checked, not passed to the model).
            init_params: must be None (independent draws have no chains to start).
            **kwargs: keyword arguments of the model.

        Raises:
            ValueError: an unknown extra field, or ``init_params`` given.
        """
        self._check_run_options(extra_fields, init_params)
        warmup_key, draw_key = jax.random.split(as_key(rng_key))
        self.warmup(warmup_key, *args, **kwargs)
        start = time.perf_counter()
        total = self.num_chains * self.num_samples
        with batch_mesh(self.devices):
            draws, self.weights_summary, self.correction_info = draw_and_correct(
                draw_key,
                self.trained,
                self.target.logdensity_fn,
                total,
                self.num_steps,
                self.correction,
                self.correction_pool,
                self.correction_steps,
            )
        self._keep(draws)
        self.timings["sampling"] = time.perf_counter() - start


def _init_networks(init) -> tuple:
    """A warm start's earlier sampler and, from an earlier CDDS fit, its teacher."""
    if isinstance(init, CDSInference):
        return init.trained, init.trained_teacher
    return init, None
