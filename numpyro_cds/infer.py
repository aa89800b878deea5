"""``CDSInference``: the stateful, MCMC-like driver.

It mirrors :class:`numpyro.infer.MCMC` (and subclasses it, so that
``arviz.from_numpyro``, :class:`~numpyro.infer.Predictive` and ``print_summary`` work
unchanged): ``run`` trains the sampler (the analogue of warm-up) and then draws.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import print_summary as _numpyro_print_summary
from numpyro.infer import MCMC

from . import __version__
from .checkpoint import (
    arguments_fingerprint,
    read_checkpoint,
    read_header,
    write_checkpoint,
)
from .consistency import ConsistencyConfig, consistency_sampler
from .flow import folded_steps
from .importance import (
    KHAT_THRESHOLD,
    ImportanceSummary,
    psis_resample,
    summarize_weights,
)
from .mcmc import mala_move
from .monitor import MonitorConfig, Snapshot, TrainingMonitor
from .target import Target, target_from_model
from .train import TrainConfig, default_optimizer, fit
from .trained import (
    EXACT_LOG_DET_MAX_DIM,
    TrainedSampler,
    config_from_json,
    load_trained,
    save_trained,
)
from .whitening import (
    AffineWhitening,
    WhiteningConfig,
    fit_whitening,
    whitening_from_spec,
)

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

_CORRECTIONS = (None, "resample", "mcmc")
_SAMPLINGS = ("flow", "sde")


class UnreliableDrawsWarning(UserWarning):
    """The importance weights say the draws and the log Z estimate are unreliable."""


class TrainingDivergedWarning(UserWarning):
    """Training diverged; it was stopped and its best snapshot kept."""


class _Sampler(NamedTuple):
    """What ArviZ reads as ``posterior.sampler``."""

    model: Callable


def _as_key(rng_key) -> jax.Array:
    """Accept new-style keys and legacy ``uint32[2]`` keys; return a new-style key."""
    if isinstance(rng_key, jax.Array) and jnp.issubdtype(
        rng_key.dtype, jax.dtypes.prng_key
    ):
        if rng_key.shape != ():
            raise TypeError(f"rng_key must be a single key, got shape {rng_key.shape}.")
        return rng_key
    array = np.asarray(rng_key) if rng_key is not None else None
    if array is None or array.dtype != np.uint32 or array.shape != (2,):
        raise TypeError(
            "rng_key must be a JAX PRNG key, e.g. jax.random.key(0) or "
            f"jax.random.PRNGKey(0); got {rng_key!r}."
        )
    return jax.random.wrap_key_data(jnp.asarray(array))


def _frozen_arguments(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The model arguments with NumPy arrays copied into (immutable) JAX arrays.

    The sampler is trained for the data as they are at ``run``: changing an array in
    place afterwards is new data (the next ``run`` sees another fingerprint and
    trains again), never a silent change of what a trained sampler targets.
    """

    def freeze(leaf):
        numeric = isinstance(leaf, np.ndarray) and leaf.dtype.kind in "biufc"
        return jnp.array(leaf) if numeric else leaf

    return jax.tree.map(freeze, (args, kwargs))


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}.")
    return int(value)


class CDSInference(MCMC):
    """Consistent diffusion sampler for a NumPyro model, used like ``MCMC``.

    ``run`` fits a whitening, trains a self-consistent diffusion sampler (SCDS) on the
    model's unconstrained posterior, then draws ``num_chains * num_samples``
    independent samples with ``num_steps`` network evaluations each.

    The defaults train in a few minutes on a 2-core CPU for models of up to about 50
    dimensions.  On a GPU raise ``batch_size`` (1024), ``num_sde_steps`` (128) and
    ``num_train_steps`` (20000): an iteration costs about the same there.

    Args:
        model: the NumPyro model.
        num_samples: draws per chain.
        num_chains: number of "chains"; draws are independent, grouped as
            ``(num_chains, num_samples)`` like MCMC output.
        num_steps: steps per draw (1, 2, 4, ..., ``num_sde_steps``).
        sampling: ``"flow"`` (``num_steps`` deterministic probability-flow Euler
            steps; change-of-variables weights) or ``"sde"`` (``num_steps``
            Euler-Maruyama steps of the controlled SDE with the same network;
            Euler-Maruyama path weights, valid at every step count but with
            ``Var(log w)`` of about ``0.29 dim 64 / num_steps`` even for a perfect
            control, so informative only at many steps; see :doc:`/weights`).
        num_train_steps: training iterations (default: ``train``'s).
        batch_size: paths per training iteration (default: ``consistency``'s).
        num_sde_steps: Euler-Maruyama steps of the training paths (power of 2;
            default: ``consistency``'s).
        learning_rate: initial Adam learning rate (default: ``train``'s).
        whitening: ``"auto"`` (fit a Gaussian approximation first), ``None`` (identity)
            or ``(loc, scale)``, each a scalar or an array over the flat unconstrained
            latent vector.
        consistency: further sampler settings; ``batch_size`` and ``num_sde_steps``
            given here take precedence.
        train: optimisation settings (:class:`~numpyro_cds.train.TrainConfig`);
            ``num_train_steps``, ``learning_rate`` and ``chunk_size`` given here take
            precedence.
        monitor: the training monitor's settings
            (:class:`~numpyro_cds.monitor.MonitorConfig`): after every chunk the EMA
            weights are scored by the Renyi-1/2 divergence of held-out draws with
            ``num_steps`` steps, estimated from their importance weights; the best
            snapshot (the untrained whitening Gaussian included) is the one that
            draws, and a diverging training is stopped with a
            :class:`TrainingDivergedWarning`.
        chunk_size: training iterations per compiled chunk (one progress update and
            one held-out score each; default: ``train``'s).
        checkpoint: optional file path.  The training state, whitening and loss history
            are written there after every chunk; a later ``run`` (even in a new process)
            with the same model arguments, settings and ``rng_key`` resumes from it
            instead of starting over, and the result equals an uninterrupted run.  A
            checkpoint written for other data, settings or key is refused with an
            error that names what differs.  The file is a JSON header and ``.npy``
            arrays (:mod:`numpyro_cds.checkpoint`): reading it never runs code.
        progress_bar: show a tqdm progress bar with the loss during training.
        correction: what ``run`` does with the draws.  ``"mcmc"`` (default;
            resample-move: PSIS-weighted resampling, then ``correction_steps`` MALA
            steps per draw, vectorised, preconditioned by the population's sd, each
            chain's step size adapted in the first half; acceptance and gradient
            evaluations in ``cds.correction_info``; see
            :func:`~numpyro_cds.mcmc.mala_move`), ``"resample"`` (the resampling
            only) or ``None`` (the sampler's draws as they are, ``num_steps``
            network evaluations each).  The default gave the lowest error on the
            benchmark suites for a few percent more time than training
            (``BENCHMARKS.md``, "Default correction").  :meth:`sample` always
            returns uncorrected draws.
        correction_steps: MALA steps per draw with ``correction="mcmc"``.  Funnels
            need many (centred eight schools: about 1000); a posterior the sampler
            already matches needs few.
        correction_pool: with a correction, ``correction_pool`` times as many draws
            are made and resampled down to ``num_chains * num_samples``: a larger
            pool makes the resampling less biased and holds more distinct draws
            (the weight summary and :meth:`log_evidence` then use the whole pool).

    Every draw carries the importance log weight ``log rho(x) - log q(x)`` of the
    k-step flow as the extra field ``log_weight`` (exact log-determinants up to
    ``EXACT_LOG_DET_MAX_DIM`` dimensions, unbiased stochastic ones above), or with
    ``sampling="sde"`` the Euler-Maruyama path weight
    (:mod:`numpyro_cds.path_weights`); from them
    come :meth:`log_evidence`, the ESS and the Pareto k-hat shown by
    :meth:`print_summary`.  A k-hat above 0.7 raises an
    :class:`UnreliableDrawsWarning`.

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
        progress_bar: bool = True,
        correction: str | None = "mcmc",
        correction_steps: int = 1000,
        correction_pool: int = 4,
    ):
        if not callable(model):
            raise TypeError(f"model must be a callable NumPyro model, got {model!r}.")
        self.sampler = _Sampler(model)
        self.num_samples = _check_count("num_samples", num_samples)
        self.num_chains = _check_count("num_chains", num_chains)
        self.num_warmup = 0
        self.thinning = 1
        self.progress_bar = bool(progress_bar)
        consistency = ConsistencyConfig() if consistency is None else consistency
        overrides = {"batch_size": batch_size, "num_sde_steps": num_sde_steps}
        self.consistency = dataclasses.replace(
            consistency, **{k: v for k, v in overrides.items() if v is not None}
        )
        train = TrainConfig() if train is None else train
        overrides = {
            "num_train_steps": num_train_steps,
            "learning_rate": learning_rate,
            "chunk_size": chunk_size,
        }
        self.train_config = dataclasses.replace(
            train, **{k: v for k, v in overrides.items() if v is not None}
        )
        self.monitor_config = MonitorConfig() if monitor is None else monitor
        self.num_steps = self._check_num_steps(num_steps)
        if sampling not in _SAMPLINGS:
            raise ValueError(
                "sampling must be 'flow' (probability-flow steps) or 'sde' "
                f"(Euler-Maruyama steps with path weights); got {sampling!r}."
            )
        self.sampling = sampling
        if not (
            whitening is None
            or whitening == "auto"
            or isinstance(whitening, (tuple, list))
        ):
            raise ValueError(
                "whitening must be 'auto', None or a pair (loc, scale); got "
                f"{whitening!r}."
            )
        self.whitening_spec = whitening
        if correction not in _CORRECTIONS:
            raise ValueError(
                f"correction must be one of {_CORRECTIONS}; got {correction!r}."
            )
        self.correction = correction
        self.correction_steps = _check_count("correction_steps", correction_steps)
        self.correction_pool = _check_count("correction_pool", correction_pool)
        self.correction_info: dict = {}
        self.weights_summary: ImportanceSummary | None = None
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self._args: tuple = ()
        self._kwargs: dict = {}
        self._fingerprint: str | None = None
        self._load_path: str | None = None
        self._loaded: tuple[TrainedSampler, dict] | None = None
        self._setup = None
        self._state = None
        self._monitor: TrainingMonitor | None = None
        self._samples = None
        self._extra_fields = None
        self.training_losses: dict[str, np.ndarray] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ set-up
    def _check_num_steps(self, num_steps) -> int:
        num_steps = _check_count("num_steps", num_steps)
        n = self.consistency.num_sde_steps
        if num_steps & (num_steps - 1) or num_steps > n:
            raise ValueError(
                f"num_steps must be a power of two no larger than num_sde_steps={n} "
                f"(1, 2, 4, ..., {n}); got {num_steps}."
            )
        return num_steps

    def _prepare(self, rng_key, args, kwargs) -> None:
        start = time.perf_counter()
        target_key, whitening_key, init_key, train_key = jax.random.split(rng_key, 4)
        target = target_from_model(target_key, self.sampler.model, args, kwargs)
        optimizer = default_optimizer(self.train_config)
        identity = None
        restored = None
        if self.checkpoint is not None:
            identity = self._checkpoint_identity(rng_key, args, kwargs, target.dim)
            restored = self._read_checkpoint(identity, target, optimizer)
        if restored is not None:
            whitening = restored["whitening"]
        elif self.whitening_spec is None:
            whitening = AffineWhitening(jnp.zeros(target.dim), jnp.ones(target.dim))
        elif isinstance(self.whitening_spec, str):
            whitening = fit_whitening(
                whitening_key,
                target.logdensity_fn,
                target.init_positions,
                WhiteningConfig(),
            )
        else:
            whitening = whitening_from_spec(self.whitening_spec, target.dim)
        logdensity_fn = whitening.whitened_logdensity(target.logdensity_fn)
        algorithm = consistency_sampler(
            logdensity_fn, target.dim, self.consistency, optimizer
        )
        state, static = algorithm.init(init_key)
        history = {}
        best, loss_floor = None, np.inf
        if restored is not None:
            state = restored["state"]
            history = {
                name: np.asarray(values, np.float64)
                for name, values in restored["losses"].items()
            }
            best = Snapshot(
                restored["best_iteration"],
                restored["best_divergence"],
                restored["best_params"],
            )
            loss_floor = restored["loss_floor"]
        self._setup = dict(
            target=target,
            whitening=whitening,
            algorithm=algorithm,
            static=static,
            train_key=train_key,
            checkpoint_identity=identity,
        )
        self._monitor = TrainingMonitor(
            self._held_out_score_fn(jax.random.fold_in(init_key, 1)),
            self.monitor_config,
            best,
            loss_floor,
        )
        if restored is not None:
            self._monitor.diagnosis = restored["diagnosis"]
        self._state = state
        self.training_losses = history
        self.timings = {"whitening": time.perf_counter() - start, "training": 0.0}
        if restored is not None:
            # Seconds spent before the checkpoint was written, in earlier processes.
            self.timings.update(restored.get("timings", {}))
        self._args, self._kwargs = args, kwargs
        self._fingerprint = arguments_fingerprint(args, kwargs)

    def _checkpoint_identity(self, rng_key, args, kwargs, dim: int) -> dict:
        """What a checkpoint must have been written for to be resumed."""
        spec = self.whitening_spec
        if isinstance(spec, (tuple, list)):
            spec = [np.asarray(part, np.float64).tolist() for part in spec]
        settings = {
            "consistency": dataclasses.asdict(self.consistency),
            "train": dataclasses.asdict(self.train_config),
            "monitor": dataclasses.asdict(self.monitor_config),
            "whitening": spec,
            "sampling": self.sampling,
            "num_steps": self.num_steps,
        }
        return {
            "dim": dim,
            # JSON's own form of the settings (lists for tuples), as read back.
            "settings": json.loads(json.dumps(settings)),
            "model_arguments_sha256": arguments_fingerprint(args, kwargs),
            "rng_key": np.asarray(jax.random.key_data(rng_key)).tolist(),
        }

    def _read_checkpoint(self, identity, target, optimizer) -> dict | None:
        if not os.path.exists(self.checkpoint):
            return None
        header = read_header(self.checkpoint)
        dim = target.dim
        shape = tuple(header.get("whitening_scale_shape", ()))
        if shape not in ((dim,), (dim, dim)):
            shape = (dim,)  # the dimension check below names the mismatch
        # The arrays' structure, shapes and dtypes (they do not depend on the
        # whitening's values or the log density).
        template, _ = consistency_sampler(
            target.logdensity_fn, dim, self.consistency, optimizer
        ).init(jax.random.key(0))
        like = {
            "whitening": AffineWhitening(jnp.zeros(dim), jnp.zeros(shape)),
            "state": template,
            "best_params": template.ema_params,
        }
        header, arrays = read_checkpoint(self.checkpoint, identity, like)
        return {**header, **arrays}

    def _held_out_score_fn(self, rng_key) -> Callable:
        """``params -> log weights`` of held-out ``num_steps``-step draws, fixed key."""
        target = self._setup["target"]

        def score(params):
            return (
                self._sampler_of(params, 0)
                .sample(
                    rng_key,
                    target.logdensity_fn,
                    self.monitor_config.num_draws,
                    self.num_steps,
                )
                .log_weight
            )

        return jax.jit(score)

    def _sampler_of(self, params, iteration) -> TrainedSampler:
        setup = self._setup
        return TrainedSampler(
            eqx.combine(params, setup["static"]),
            setup["whitening"],
            self.consistency,
            self.sampling,
            jnp.asarray(iteration, jnp.int32),
        )

    def _write_checkpoint(self) -> None:
        whitening = self._setup["whitening"]
        header = {
            **self._setup["checkpoint_identity"],
            "library_version": __version__,
            "whitening_scale_shape": list(whitening.scale.shape),
            "best_iteration": self._monitor.best.iteration,
            "best_divergence": self._monitor.best.divergence,
            "loss_floor": self._monitor.loss_floor,
            "diagnosis": self._monitor.diagnosis,
            "losses": {
                name: np.asarray(values, np.float64).tolist()
                for name, values in self.training_losses.items()
            },
            "timings": dict(self.timings),
        }
        arrays = {
            "whitening": whitening,
            "state": self._state,
            "best_params": self._monitor.best.params,
        }
        write_checkpoint(self.checkpoint, header, arrays)

    @property
    def target(self) -> Target:
        """The flat unconstrained target of the last run."""
        self._require_setup()
        return self._setup["target"]

    @property
    def whitening(self) -> AffineWhitening:
        """The whitening map of the last run."""
        self._require_setup()
        return self._setup["whitening"]

    @property
    def is_trained(self) -> bool:
        """Whether training for the current model arguments has finished.

        A training that diverged and was stopped counts as finished, and so does a
        sampler read by :meth:`load`.
        """
        if self._loaded is not None:
            return True
        if self._state is None:
            return False
        done = int(self._state.iteration) >= self.train_config.num_train_steps
        return done or self._monitor.stop

    @property
    def training_iterations(self) -> int:
        """Training iterations done so far."""
        self._require_setup()
        if self._loaded is not None:
            return int(self._loaded[1]["training_iterations"])
        return int(self._state.iteration)

    @property
    def snapshot(self) -> Snapshot:
        """The EMA weights that draw: the monitor's choice (see ``monitor``).

        ``monitor_config.keep_best`` is read at each draw, so setting
        ``cds.monitor_config = MonitorConfig(keep_best=False)`` after training draws
        with the last snapshot instead of the best, without retraining.
        """
        self._require_setup()
        if self._loaded is not None:
            sampler, header = self._loaded
            params = eqx.filter(sampler.network, eqx.is_inexact_array)
            divergence = header["snapshot_divergence"]
            return Snapshot(int(sampler.iteration), divergence, params)
        return self._monitor.chosen(self.monitor_config.keep_best)

    # --------------------------------------------------------------- save / load
    def _site_layout(self, target: Target) -> dict:
        sites = target.unravel_fn(jnp.zeros(target.dim))
        return {name: list(np.shape(value)) for name, value in sites.items()}

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained sampler to ``path`` (a JSON header and ``.npy`` arrays).

        The file holds the sampler that draws (:attr:`trained`), every setting, the
        unconstrained site names and shapes, and a fingerprint of the model
        arguments; :meth:`load` reads it back for the same model and data and draws
        exactly what this object draws.  It is never a pickle: reading it runs no
        code.
        """
        self._require_trained()
        snapshot = self.snapshot
        header = {
            **self._checkpoint_identity(jax.random.key(0), self._args, self._kwargs, 0),
            "sites": self._site_layout(self._setup["target"]),
            "library_version": __version__,
            "training_iterations": self.training_iterations,
            "snapshot_divergence": snapshot.divergence,
            "losses": {
                name: np.asarray(values, np.float64).tolist()
                for name, values in self.training_losses.items()
            },
            "timings": dict(self.timings),
        }
        for name in ("rng_key", "dim"):
            header.pop(name)
        save_trained(os.fspath(path), self.trained, header)

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

        ``run(rng_key, *args, **kwargs)`` then checks that the model's unconstrained
        sites and the arguments are those the sampler was trained for (refusing any
        difference, named) and draws without training; with the key of the original
        ``run`` it gives the same draws.

        Args:
            path: a file written by :meth:`save`.
            model: the NumPyro model it was trained for.
            **kwargs: drawing settings (``num_samples``, ``num_chains``,
                ``num_steps``, ``progress_bar``, ``correction``,
                ``correction_steps``, ``correction_pool``); the others come from
                the file.

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
        header = read_header(path)
        if header.get("kind") != "trained_sampler":
            raise ValueError(
                f"{path!r} is not a saved sampler (it is a training checkpoint or "
                "another file); pass a file written by CDSInference.save."
            )
        try:
            settings = header["settings"]
            whitening = settings["whitening"]
            cds = cls(
                model,
                sampling=header["sampling"],
                whitening=tuple(whitening)
                if isinstance(whitening, list)
                else whitening,
                consistency=config_from_json(ConsistencyConfig, header["consistency"]),
                train=config_from_json(TrainConfig, settings["train"]),
                monitor=config_from_json(MonitorConfig, settings["monitor"]),
                **{"num_steps": settings["num_steps"], **kwargs},
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"Saved sampler {path!r} is damaged: {error!r}.") from None
        cds._load_path = path
        return cds

    def _prepare_loaded(self, rng_key, args, kwargs) -> None:
        target_key = jax.random.split(rng_key, 4)[0]
        target = target_from_model(target_key, self.sampler.model, args, kwargs)
        expected = {
            "dim": target.dim,
            "sites": self._site_layout(target),
            "model_arguments_sha256": arguments_fingerprint(args, kwargs),
        }
        sampler, header = load_trained(self._load_path, expected)
        self._setup = {"target": target, "whitening": sampler.whitening}
        self._loaded = (sampler, header)
        self.training_losses = {
            name: np.asarray(values, np.float64)
            for name, values in header["losses"].items()
        }
        self.timings = {**header["timings"], "sampling": 0.0}
        self._args, self._kwargs = args, kwargs
        self._fingerprint = expected["model_arguments_sha256"]

    def _require_setup(self):
        if self._setup is None:
            raise RuntimeError("Call run(rng_key, *args, **kwargs) first.")

    # ----------------------------------------------------------------- training
    def warmup(self, rng_key, *args, **kwargs) -> None:
        """Fit the whitening and train the sampler (NumPyro's warm-up analogue).

        Training for the same model arguments resumes where it stopped: if it was
        interrupted (Ctrl-C), calling ``warmup`` or ``run`` again continues from the
        last completed chunk and gives the same result as an uninterrupted run.
        """
        rng_key = _as_key(rng_key)
        args, kwargs = _frozen_arguments(args, kwargs)
        # The arguments' contents decide (data changed in place is new data).
        same = self._setup is not None and self._fingerprint == arguments_fingerprint(
            args, kwargs
        )
        if not same and self._load_path is not None:
            self._prepare_loaded(rng_key, args, kwargs)
        elif not same:
            self._prepare(rng_key, args, kwargs)
        if self.is_trained:
            return
        setup = self._setup
        history = self.training_losses
        trained_before = self.timings["training"]
        start = time.perf_counter()

        monitor = self._monitor
        if monitor.best is None:
            monitor.observe(0, self._state.ema_params, None)

        def keep(state, info):
            self._state = state
            self.timings["training"] = trained_before + time.perf_counter() - start
            for name, values in info._asdict().items():
                history[name] = np.concatenate([history.get(name, []), values])
            monitor.observe(int(state.iteration), state.ema_params, info._asdict())
            if self.checkpoint is not None:
                self._write_checkpoint()
            return {"D": f"{monitor.latest.divergence:.3g}", "stop": monitor.stop}

        try:
            fit(
                setup["train_key"],
                setup["algorithm"].step,
                self._state,
                setup["static"],
                self.train_config.num_train_steps,
                chunk_size=self.train_config.chunk_size,
                progress_bar=self.progress_bar,
                on_chunk=keep,
            )
        except KeyboardInterrupt:
            print(
                f"Training interrupted at iteration {int(self._state.iteration)}; "
                "call run() again with the same arguments to resume."
            )
            raise
        finally:
            self.timings["training"] = trained_before + time.perf_counter() - start
        if monitor.stop:
            warnings.warn(
                f"{monitor.diagnosis}. Training stopped there; the sampler draws "
                f"with its best snapshot (iteration {monitor.best.iteration}, "
                f"held-out divergence {monitor.best.divergence:.3g}). Lower "
                "learning_rate, or check the model's log density where the draws "
                "went.",
                TrainingDivergedWarning,
                stacklevel=2,
            )

    # ----------------------------------------------------------------- sampling
    @property
    def log_det_method(self) -> str:
        """How log-determinants are computed: ``"exact"`` or ``"stochastic"``."""
        return self.trained.log_det_method

    @property
    def trained(self) -> TrainedSampler:
        """The sampler that draws, as one value (the monitor's chosen snapshot)."""
        self._require_setup()
        if self._loaded is not None:
            return self._loaded[0]
        snapshot = self.snapshot
        return self._sampler_of(snapshot.params, snapshot.iteration)

    def _draw_flat(self, rng_key, num_samples: int, num_steps: int, weights: bool):
        """Flat draws of :attr:`trained` (see :meth:`TrainedSampler.sample`)."""
        return self.trained.sample(
            rng_key,
            self._setup["target"].logdensity_fn,
            num_samples,
            num_steps,
            weights,
        )

    def _constrain(self, xs):
        return jax.vmap(self._setup["target"].postprocess_fn)(xs)

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
            zero (log weight ``-inf``), with an :class:`UnreliableDrawsWarning`; a
            flow step that folds space (see :func:`~numpyro_cds.flow.folded_steps`)
            also raises one.
        """
        self._require_trained()
        num_samples = _check_count("num_samples", num_samples)
        num_steps = (
            self.num_steps if num_steps is None else self._check_num_steps(num_steps)
        )
        draws = self._draw_flat(_as_key(rng_key), num_samples, num_steps, log_weights)
        samples = self._constrain(draws.x)
        if not log_weights:
            return samples
        self._warn_if_folded(draws.step_signs, num_steps)
        return samples, self._checked_log_weights(draws.log_weight)

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
        warmup_key, draw_key = jax.random.split(_as_key(rng_key))
        self.warmup(warmup_key, *args, **kwargs)
        start = time.perf_counter()
        draw_key, resample_key, move_key = jax.random.split(draw_key, 3)
        total = self.num_chains * self.num_samples
        pool = total * (1 if self.correction is None else self.correction_pool)
        draws = self._draw_flat(draw_key, pool, self.num_steps, True)
        xs = draws.x
        log_weight = self._checked_log_weights(draws.log_weight)
        self.weights_summary = summarize_weights(log_weight)
        self._warn_if_unreliable(draws.step_signs)
        fields = (draws.lp, draws.log_q, log_weight, jnp.zeros(pool, bool))
        extra = dict(zip(EXTRA_FIELDS, fields, strict=True))
        if self.correction is not None:
            index = psis_resample(resample_key, log_weight, total)
            xs = xs[index]
            extra = {k: v[index] for k, v in extra.items()}
        if self.correction == "mcmc":
            xs, extra["lp"] = self._move(move_key, xs)
        self._samples = jax.block_until_ready(self._constrain(xs))
        self._extra_fields = extra
        self.timings["sampling"] = time.perf_counter() - start

    def _move(self, rng_key, xs):
        """MALA moves of the draws in the whitened space; returns them and their lp."""
        whitening, target = self._setup["whitening"], self._setup["target"]
        logdensity_fn = whitening.whitened_logdensity(target.logdensity_fn)
        half = self.correction_steps // 2

        @jax.jit
        def move(key, xs):
            zs, info = mala_move(
                key,
                logdensity_fn,
                whitening.whiten(xs),
                num_adapt=half,
                num_steps=self.correction_steps - half,
            )
            xs = whitening.unwhiten(zs)
            return xs, jax.vmap(target.logdensity_fn)(xs), info

        xs, lp, info = move(rng_key, xs)
        self.correction_info = {
            "acceptance_rate": float(info.acceptance_rate),
            "step_size": float(jnp.median(info.step_size)),
            "gradient_evaluations": int(info.gradient_evaluations),
        }
        return xs, lp

    @staticmethod
    def _checked_log_weights(log_weight):
        """Turn NaN log weights (NaN model log density) into zero weights, warning."""
        nan = jnp.isnan(log_weight)
        if bool(jnp.any(nan)):
            warnings.warn(
                f"{int(jnp.sum(nan))} draws have a NaN model log density; they get "
                "importance weight zero. Check the model where it is undefined.",
                UnreliableDrawsWarning,
                stacklevel=3,
            )
        return jnp.where(nan, -jnp.inf, log_weight)

    def _draws_description(self) -> str:
        kind = "Euler-Maruyama" if self.sampling == "sde" else "probability-flow"
        return f"{self.num_steps}-step {kind} draws"

    def _warn_if_unreliable(self, step_signs) -> None:
        summary = self.weights_summary
        if summary.pareto_k > KHAT_THRESHOLD:
            advice = (
                "raise correction_steps: the corrected draws depend on the MCMC "
                "moves to fix what the sampler misses"
                if self.correction == "mcmc"
                else "use correction='mcmc'"
            )
            warnings.warn(
                f"Pareto k-hat of the importance weights is {summary.pareto_k:.2f} > "
                f"{KHAT_THRESHOLD}: the {self._draws_description()} and the log Z "
                "estimate are not reliable. Train longer (num_train_steps), draw with "
                f"more steps (num_steps), or {advice}.",
                UnreliableDrawsWarning,
                stacklevel=3,
            )
        self._warn_if_folded(step_signs, self.num_steps)

    def _warn_if_folded(self, step_signs, num_steps: int) -> None:
        # Path weights are exact whatever the steps do; flow weights need invertibility.
        exact_flow = self.trained.weights_are_exact
        folds = folded_steps(step_signs) if exact_flow else []
        if folds:
            warnings.warn(
                f"Flow steps {folds} of {num_steps} fold space (their Jacobian "
                "determinant changes sign between draws), so the importance weights "
                "are not exact. Draw with more steps or train longer.",
                UnreliableDrawsWarning,
                stacklevel=4,
            )

    def log_evidence(self) -> tuple[float, float]:
        """``(log Z estimate, standard error)`` from the draws' importance weights.

        ``Z`` is the normalising constant of the model's density over its latent
        sites given the data, i.e. the marginal likelihood when the model's priors
        are normalised.
        """
        if self.weights_summary is None:
            raise RuntimeError("No draws yet: call run(rng_key, *args, **kwargs).")
        return self.weights_summary.log_evidence, self.weights_summary.standard_error

    # ------------------------------------------------------------------ results
    def _group(self, tree, group_by_chain: bool):
        if tree is None:
            raise RuntimeError("No samples yet: call run(rng_key, *args, **kwargs).")
        if not group_by_chain:
            return dict(tree)
        shape = (self.num_chains, self.num_samples)
        return {k: v.reshape(shape + v.shape[1:]) for k, v in tree.items()}

    _NO_CHAIN_STATE = (
        "CDSInference has no MCMC chain state ({name}): its draws are independent. "
        "To draw more without retraining, call cds.sample(key, n) or run() again with "
        "the same model arguments; to keep a training across processes, pass "
        "checkpoint=path."
    )

    @property
    def last_state(self):
        """Not available: there is no chain state (raises with what to use)."""
        raise AttributeError(self._NO_CHAIN_STATE.format(name="last_state"))

    @property
    def post_warmup_state(self):
        """Not available: there is no chain state (raises with what to use)."""
        raise AttributeError(self._NO_CHAIN_STATE.format(name="post_warmup_state"))

    @post_warmup_state.setter
    def post_warmup_state(self, value):
        raise AttributeError(self._NO_CHAIN_STATE.format(name="post_warmup_state"))

    def transfer_states_to_host(self) -> None:
        """Move the draws and their extra fields to host memory (NumPy arrays)."""
        self._samples = jax.device_get(self._samples)
        self._extra_fields = jax.device_get(self._extra_fields)

    def __getstate__(self):
        raise TypeError(
            "A CDSInference cannot be pickled: it holds the model and compiled "
            "functions, and loading a pickle runs code. Save the trained sampler "
            "with cds.save(path) and read it back with CDSInference.load(path, "
            "model); keep the draws (cds.get_samples()) or an ArviZ InferenceData; "
            "keep a training across processes with checkpoint=path."
        )

    def get_samples(self, group_by_chain: bool = False) -> dict:
        """Constrained latent and deterministic sites, as ``MCMC.get_samples``."""
        return self._group(self._samples, group_by_chain)

    def get_extra_fields(self, group_by_chain: bool = False) -> dict:
        """Per-draw ``lp`` (unconstrained log joint), ``log_weight``, ``diverging``."""
        return self._group(self._extra_fields, group_by_chain)

    def to_inference_data(self, **kwargs):
        """``arviz.from_numpyro(self, **kwargs)`` with the importance weights' summary.

        ``sample_stats`` holds ``lp``, ``log_q`` and ``log_weight`` of every draw
        (as drawn by the sampler: after ``correction="mcmc"`` moves, ``lp`` is the
        moved draw's and the other two are its starting draw's); the attributes of
        the ``posterior`` and ``sample_stats`` groups hold ``log_evidence``, its
        ``log_evidence_se``, the normalised ``importance_ess``, the PSIS
        ``pareto_k``, ``num_steps``, ``sampling`` and ``correction``.
        """
        import arviz as az

        summary = self.weights_summary
        if summary is None:
            raise RuntimeError("No draws yet: call run(rng_key, *args, **kwargs).")
        data = az.from_numpyro(self, **kwargs)
        attrs = {
            "log_evidence": summary.log_evidence,
            "log_evidence_se": summary.standard_error,
            "importance_ess": summary.ess,
            "pareto_k": summary.pareto_k,
            "num_steps": self.num_steps,
            "sampling": self.sampling,
            "correction": str(self.correction),
        }
        for group in ("posterior", "sample_stats"):
            data[group].attrs.update(attrs)
        return data

    def print_summary(self, prob: float = 0.9, exclude_deterministic: bool = True):
        """Print NumPyro's summary table of the draws, then the training summary."""
        samples = self.get_samples(group_by_chain=True)
        if exclude_deterministic:
            latent = set(self.target.unravel_fn(jnp.zeros(self.target.dim)))
            samples = {k: v for k, v in samples.items() if k in latent}
        _numpyro_print_summary(samples, prob=prob, group_by_chain=True)
        losses = self.training_losses.get("diffusion_loss", np.array([np.nan]))
        tail = losses[-max(1, len(losses) // 10) :]
        snapshot = self.snapshot
        print(
            f"CDS: {self.training_iterations} training iterations "
            f"({self.timings.get('training', 0.0):.1f} s), final diffusion loss "
            f"{np.nanmedian(tail):.4g} (median of the last tenth); drawing with the "
            "snapshot of iteration "
            f"{snapshot.iteration} (held-out Renyi-1/2 divergence "
            f"{snapshot.divergence:.3g}); "
            f"{self._draws_description()}."
        )
        summary = self.weights_summary
        verdict = "unreliable" if summary.pareto_k > KHAT_THRESHOLD else "ok"
        kind = (
            "Euler-Maruyama path weights"
            if self.sampling == "sde"
            else f"{self.log_det_method} log-determinants"
        )
        print(
            f"Importance weights ({summary.num_draws} draws, {kind}): log Z = "
            f"{summary.log_evidence:.4f} +- {summary.standard_error:.4f}, ELBO "
            f"{summary.elbo:.4f}, ESS {summary.ess:.3f}, Pareto k-hat "
            f"{summary.pareto_k:.2f} ({verdict})"
            + ("." if self.correction is None else ", draws resampled.")
        )
        if self.correction == "mcmc":
            info = self.correction_info
            print(
                f"MCMC correction: {self.correction_steps} MALA steps per draw, "
                f"acceptance {info['acceptance_rate']:.2f}, "
                f"{info['gradient_evaluations']} gradient evaluations."
            )
