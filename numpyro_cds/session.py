"""One training of a sampler for one model and data: the state behind ``CDSInference``.

:class:`Settings` is every setting that changes the trained sampler, in one value with
its JSON form (checkpoints and saved samplers record it).  A :class:`TrainingSession`
holds what one training needs and produces: the target, the whitening, the training
state, the monitor, the loss history and the checkpoint file; ``train`` runs (or
resumes) it, and ``trained`` is the :class:`~numpyro_cds.trained.TrainedSampler` of the
chosen snapshot.  A :class:`LoadedSession` has the same face for a sampler read from a
file written by :func:`save_session`, and an :class:`AcceptedInitSession` for a warm
start's earlier sampler that needs no training (:mod:`numpyro_cds.warm_start`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import __version__
from .arguments import check_num_steps, with_overrides
from .checkpoint import (
    arguments_fingerprint,
    read_checkpoint,
    read_header,
    write_checkpoint,
)
from .consistency import (
    ConsistencyConfig,
    SamplerAlgorithm,
    SCDSState,
    consistency_sampler,
)
from .distillation import distillation_sampler
from .importance import summarize_weights
from .monitor import (
    MonitorConfig,
    Snapshot,
    TrainingMonitor,
    renyi_half_divergence,
)
from .reference import REFERENCE_METHODS, reference_sampler
from .sharding import replicate
from .target import Target, target_from_model
from .teachers import resolve_teacher, sampler_fingerprint
from .train import TrainConfig, default_optimizer, fit
from .trained import (
    TrainedSampler,
    config_from_json,
    load_trained,
    read_trained_header,
    save_trained,
)
from .warm_start import init_log_weights, resolve_init
from .whitening import (
    AffineWhitening,
    WhiteningConfig,
    check_proper,
    fit_whitening,
    whitening_from_spec,
)

#: The training methods: the self-consistent sampler, the diffusion sampler it builds
#: on, the consistency distillation of a trained teacher, and the diffusion samplers
#: trained against a reference process.
METHODS = ("scds", "dis", "cdds", *REFERENCE_METHODS)
#: The methods that are diffusion samplers: they draw with their SDE by default.
DIFFUSION_METHODS = ("dis", *REFERENCE_METHODS)
#: The teachers CDDS can train itself, before distilling them.
TRAINED_TEACHERS = ("dis", "dds")

__all__ = [
    "DIFFUSION_METHODS",
    "DRAWING_KEYWORDS",
    "DistillationSession",
    "METHODS",
    "Settings",
    "TRAINED_TEACHERS",
    "TrainingSession",
    "LoadedSession",
    "open_session",
    "read_saved_settings",
    "save_session",
    "saved_keywords",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting that changes the trained sampler or its draws.

    Attributes:
        consistency: the sampler and its losses.
        train: the optimisation.
        monitor: the training monitor.
        whitening: ``"auto"``, None or a pair ``(loc, scale)``.
        sampling: ``"flow"`` or ``"sde"``.
        num_steps: steps per draw.
        method: one of :data:`METHODS`.
        teacher_method: the method of the teacher a CDDS training trains first when
            it is given none, one of :data:`TRAINED_TEACHERS`.
    """

    consistency: ConsistencyConfig
    train: TrainConfig
    monitor: MonitorConfig
    whitening: str | tuple | None
    sampling: str
    num_steps: int
    method: str = "cdds"
    teacher_method: str = "dds"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}.")
        if self.teacher_method not in TRAINED_TEACHERS:
            raise ValueError(
                f"teacher_method must be one of {TRAINED_TEACHERS}; got "
                f"{self.teacher_method!r}."
            )
        steps = check_num_steps(self.num_steps, self.consistency.num_sde_steps)
        object.__setattr__(self, "num_steps", steps)
        if self.sampling not in ("flow", "sde"):
            raise ValueError(
                "sampling must be 'flow' (probability-flow steps) or 'sde' "
                f"(Euler-Maruyama steps with path weights); got {self.sampling!r}."
            )
        if self.method == "cdds" and self.sampling != "flow":
            raise ValueError(
                "method='cdds' draws with consistency steps (sampling='flow'); got "
                f"sampling={self.sampling!r}. For SDE draws train its teacher's "
                "method instead (method='dds' or 'dis')."
            )
        if self.method in REFERENCE_METHODS and self.sampling != "sde":
            raise ValueError(
                f"method={self.method!r} draws with its SDE (sampling='sde'); got "
                f"sampling={self.sampling!r}. Its control has no probability-flow "
                "form; use method='scds' or 'dis' for flow draws."
            )
        spec = self.whitening
        if not (spec is None or spec == "auto" or isinstance(spec, (tuple, list))):
            raise ValueError(
                f"whitening must be 'auto', None or a pair (loc, scale); got {spec!r}."
            )

    @classmethod
    def from_keywords(
        cls,
        *,
        consistency: ConsistencyConfig | None,
        train: TrainConfig | None,
        monitor: MonitorConfig | None,
        whitening: str | tuple | None,
        sampling: str | None,
        num_steps: int | None,
        method: str = "cdds",
        teacher_method: str | None = None,
        has_teacher: bool = False,
        **overrides,
    ) -> Settings:
        """The settings from ``CDSInference``'s keywords.

        The typed configs (None: their defaults) with the flat overrides that are not
        None replaced: ``batch_size`` and ``num_sde_steps`` of ``consistency``;
        ``num_train_steps``, ``max_train_steps``, ``max_time``, ``learning_rate``
        and ``chunk_size`` of ``train``.
        ``sampling`` and ``num_steps`` None are the method's: ``N`` Euler-Maruyama
        steps for DIS (a diffusion sampler), one probability-flow step otherwise.
        ``teacher_method`` None is DDS; it is refused with a teacher (``has_teacher``,
        which has its own method) and with any other method than CDDS.
        """
        if teacher_method is not None and (has_teacher or method != "cdds"):
            raise ValueError(
                "teacher_method chooses the teacher method='cdds' trains when it is "
                f"given none; got method={method!r}"
                + (" and a teacher=" if has_teacher else "")
                + ": pass teacher_method only with method='cdds' and no teacher."
            )
        names = {"consistency": ("batch_size", "num_sde_steps")}
        names["train"] = ("num_train_steps", "max_train_steps", "max_time")
        names["train"] += ("learning_rate", "chunk_size")
        configs = {
            "consistency": ConsistencyConfig() if consistency is None else consistency,
            "train": TrainConfig() if train is None else train,
        }
        for name, fields in names.items():
            given = {field: overrides.pop(field, None) for field in fields}
            configs[name] = with_overrides(configs[name], **given)
        if overrides:
            raise TypeError(f"Unknown settings {sorted(overrides)}.")
        diffusion = method in DIFFUSION_METHODS
        if sampling is None:
            sampling = "sde" if diffusion else "flow"
        if num_steps is None:
            num_steps = configs["consistency"].num_sde_steps if diffusion else 1
        return cls(
            **configs,
            monitor=MonitorConfig() if monitor is None else monitor,
            whitening=whitening,
            sampling=sampling,
            num_steps=num_steps,
            method=method,
            teacher_method="dds" if teacher_method is None else teacher_method,
        )

    @property
    def loss_name(self) -> str:
        """The training loss shown on the progress bar and watched by the monitor."""
        if self.method in REFERENCE_METHODS:
            return "log_variance"
        return "distillation_loss" if self.method == "cdds" else "diffusion_loss"

    @property
    def updates_per_step(self) -> int:
        """Optimiser updates per training iteration: 2 for SCDS, else 1."""
        return 2 if self.method == "scds" else 1

    def trains_like(self, other: Settings) -> bool:
        """Whether ``other`` trains the same sampler.

        The monitor's ``keep_best`` is read at each draw and changes nothing trained.
        """
        mine, theirs = self.to_json(), other.to_json()
        for settings in (mine, theirs):
            settings["monitor"].pop("keep_best")
        return mine == theirs

    def to_json(self) -> dict:
        """The settings as JSON gives them back (lists for tuples)."""
        spec = self.whitening
        if isinstance(spec, (tuple, list)):
            spec = [np.asarray(part, np.float64).tolist() for part in spec]
        settings = {
            "consistency": dataclasses.asdict(self.consistency),
            "train": dataclasses.asdict(self.train),
            "monitor": dataclasses.asdict(self.monitor),
            "whitening": spec,
            "sampling": self.sampling,
            "num_steps": self.num_steps,
            "method": self.method,
            "teacher_method": self.teacher_method,
        }
        return json.loads(json.dumps(settings))

    @classmethod
    def from_json(cls, fields: dict) -> Settings:
        """The inverse of :meth:`to_json`."""
        whitening = fields["whitening"]
        return cls(
            consistency=config_from_json(ConsistencyConfig, fields["consistency"]),
            train=config_from_json(TrainConfig, fields["train"]),
            monitor=config_from_json(MonitorConfig, fields["monitor"]),
            whitening=tuple(whitening) if isinstance(whitening, list) else whitening,
            sampling=fields["sampling"],
            num_steps=fields["num_steps"],
            method=fields.get("method", "scds"),
            # Files from before the option: every CDDS teacher was DIS.
            teacher_method=fields.get("teacher_method", "dis"),
        )


def _fit_whitening(rng_key, spec, target: Target) -> AffineWhitening:
    """The whitening of ``spec``, refusing a posterior that looks improper.

    The fit of ``"auto"`` checks that itself; a given whitening is checked by
    :func:`~numpyro_cds.whitening.check_proper`.
    """
    if isinstance(spec, str):
        return fit_whitening(
            rng_key, target.logdensity_fn, target.init_positions, WhiteningConfig()
        )
    if spec is None:
        whitening = AffineWhitening(jnp.zeros(target.dim), jnp.ones(target.dim))
    else:
        whitening = whitening_from_spec(spec, target.dim)
    check_proper(rng_key, target.logdensity_fn, whitening, target.init_positions)
    return whitening


def sampler_algorithm(
    settings: Settings,
    logdensity_fn: Callable,
    dim: int,
    optimizer: optax.GradientTransformation,
    teacher: TrainedSampler | None = None,
) -> SamplerAlgorithm:
    """The training algorithm of ``settings.method`` on a whitened log density.

    SCDS as configured; DIS is SCDS without the self-consistency and volume terms;
    CDDS distils ``teacher`` (:func:`~numpyro_cds.distillation.distillation_sampler`);
    PIS and DDS are :func:`~numpyro_cds.reference.reference_sampler`.
    """
    config = settings.consistency
    if settings.method in REFERENCE_METHODS:
        return reference_sampler(logdensity_fn, dim, config, optimizer, settings.method)
    if settings.method == "cdds":
        return distillation_sampler(
            logdensity_fn, teacher.network, config, optimizer, teacher.schedule
        )
    if settings.method == "dis":
        config = dataclasses.replace(config, consistency_weight=0.0, volume_weight=0.0)
    return consistency_sampler(logdensity_fn, dim, config, optimizer)


def _started_from(init: TrainedSampler, state: SCDSState, optimizer) -> SCDSState:
    """A fresh training state whose weights (and their EMA) are ``init``'s.

    Raises:
        ValueError: ``init``'s network is not of this training's form (e.g. a
            CDDS student distilled from another kind of teacher).
    """
    params = eqx.filter(init.network, eqx.is_inexact_array)
    if jax.tree.structure(params) != jax.tree.structure(state.params) or any(
        a.shape != b.shape
        for a, b in zip(
            jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True
        )
    ):
        raise ValueError(
            "init's network is not of the form this fit trains (another teacher "
            "method, or another network): start from a fit with the same settings."
        )
    return SCDSState(params, params, optimizer.init(params), state.iteration)


def _mark_from_json(restored: dict) -> tuple[int, float] | None:
    mark = restored.get("plateau_mark")
    return None if mark is None else (int(mark[0]), float(mark[1]))


def _losses_from_json(losses: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(values, np.float64) for name, values in losses.items()}


def _losses_to_json(losses: dict) -> dict[str, list]:
    return {name: np.asarray(v, np.float64).tolist() for name, v in losses.items()}


class TrainingSession:
    """The training of one sampler for one model and data, resumable.

    Args:
        rng_key: the key of the whole training (whitening, initialisation, paths).
        model: the NumPyro model.
        args: its positional arguments.
        kwargs: its keyword arguments.
        settings: the settings.
        optimizer: the optax transformation; None: :func:`~numpyro_cds.train.
            default_optimizer` of ``settings.train``.
        checkpoint: a file to write after every chunk and to resume from; one written
            for other data, settings or key is refused (ValueError naming each
            difference).
        teacher: with ``settings.method == "cdds"``, the trained sampler to distil:
            a :class:`~numpyro_cds.trained.TrainedSampler` or the path of a saved
            one (see :func:`~numpyro_cds.teachers.resolve_teacher`); its whitening
            is the student's.
        init: a warm start's earlier sampler (:mod:`numpyro_cds.warm_start`,
            checked here): the training starts from its whitening and network
            weights.
        whitening: a whitening to use instead of fitting one (a CDDS teacher's, in
            a warm start).

    Attributes:
        target: the flat unconstrained target.
        whitening: the whitening map.
        losses: per-iteration training diagnostics (NumPy arrays by name).
        timings: seconds spent on the whitening fit and the training.
    """

    def __init__(
        self,
        rng_key,
        model: Callable,
        args: tuple,
        kwargs: dict,
        settings: Settings,
        optimizer: optax.GradientTransformation | None = None,
        checkpoint: str | None = None,
        teacher: TrainedSampler | str | None = None,
        init: TrainedSampler | None = None,
        whitening: AffineWhitening | None = None,
    ):
        start = time.perf_counter()
        target_key, whitening_key, init_key, self._train_key = jax.random.split(
            rng_key, 4
        )
        self.settings = settings
        self.target = target = target_from_model(target_key, model, args, kwargs)
        self.fingerprint = arguments_fingerprint(args, kwargs)
        self.teacher = None
        if settings.method == "cdds":
            self.teacher = resolve_teacher(teacher, target, self.fingerprint, settings)
        if init is not None:
            init = resolve_init(init, target, settings)
        self._checkpoint = checkpoint
        self._identity = {
            "dim": target.dim,
            "sites": target.site_layout(),
            "settings": settings.to_json(),
            "optimizer": "default" if optimizer is None else "custom",
            "model_arguments_sha256": self.fingerprint,
            "rng_key": np.asarray(jax.random.key_data(rng_key)).tolist(),
            "teacher_sha256": None
            if self.teacher is None
            else (sampler_fingerprint(self.teacher)),
            "init_sha256": None if init is None else sampler_fingerprint(init),
        }
        if init is not None:
            whitening = init.whitening
        if optimizer is None:
            optimizer = default_optimizer(settings.train, settings.updates_per_step)
        restored = None
        if checkpoint is not None and os.path.exists(checkpoint):
            restored = self._read_checkpoint(optimizer)
        if restored is not None:
            self.whitening = restored["whitening"]
        elif self.teacher is not None:
            self.whitening = self.teacher.whitening
        elif whitening is not None:
            self.whitening = whitening
        else:
            self.whitening = _fit_whitening(whitening_key, settings.whitening, target)
        self._algorithm = sampler_algorithm(
            settings,
            self.whitening.whitened_logdensity(target.logdensity_fn),
            target.dim,
            optimizer,
            self.teacher,
        )
        self.state, self._static = self._algorithm.init(init_key)
        if init is not None:
            self.state = _started_from(init, self.state, optimizer)
        self.losses: dict[str, np.ndarray] = {}
        best, loss_floor = None, np.inf
        if restored is not None:
            self.state = restored["state"]
            self.losses = _losses_from_json(restored["losses"])
            best = Snapshot(
                restored["best_iteration"],
                restored["best_divergence"],
                restored["best_params"],
            )
            loss_floor = restored["loss_floor"]
        self.monitor = TrainingMonitor(
            self._held_out_score_fn(jax.random.fold_in(init_key, 1)),
            settings.monitor,
            best,
            loss_floor,
            loss_name=self._algorithm.loss_name,
            mark=None if restored is None else _mark_from_json(restored),
        )
        #: Why the training stopped before ``total_steps`` (plateau, time), or None.
        self.stop_reason = None if restored is None else restored.get("stop_reason")
        self.timings = {"whitening": time.perf_counter() - start, "training": 0.0}
        if restored is not None:
            self.monitor.diagnosis = restored["diagnosis"]
            # Seconds spent before the checkpoint was written, in earlier processes.
            self.timings.update(restored.get("timings", {}))

    def _read_checkpoint(self, optimizer) -> dict:
        header = read_header(self._checkpoint)
        dim = self.target.dim
        shape = tuple(header.get("whitening_scale_shape", ()))
        if shape not in ((dim,), (dim, dim)):
            shape = (dim,)  # the dimension check names the mismatch
        # The arrays' structure, shapes and dtypes (they do not depend on the
        # whitening's values or the log density).
        template, _ = sampler_algorithm(
            self.settings, self.target.logdensity_fn, dim, optimizer, self.teacher
        ).init(jax.random.key(0))
        like = {
            "whitening": AffineWhitening(jnp.zeros(dim), jnp.zeros(shape)),
            "state": template,
            "best_params": template.ema_params,
        }
        header, arrays = read_checkpoint(self._checkpoint, self._identity, like)
        return {**header, **arrays}

    def _write_checkpoint(self) -> None:
        monitor = self.monitor
        header = {
            **self._identity,
            "library_version": __version__,
            "whitening_scale_shape": list(self.whitening.scale.shape),
            "best_iteration": monitor.best.iteration,
            "best_divergence": monitor.best.divergence,
            "loss_floor": monitor.loss_floor,
            "plateau_mark": None if monitor.mark is None else list(monitor.mark),
            "stop_reason": self.stop_reason,
            "diagnosis": monitor.diagnosis,
            "losses": _losses_to_json(self.losses),
            "timings": dict(self.timings),
        }
        arrays = {
            "whitening": self.whitening,
            "state": self.state,
            "best_params": monitor.best.params,
        }
        write_checkpoint(self._checkpoint, header, arrays)

    def _held_out_score_fn(self, rng_key) -> Callable:
        """``params -> log weights`` of held-out draws (fixed key), compiled once."""
        logdensity_fn = self.target.logdensity_fn
        settings = self.settings

        def score(params):
            draws = self.sampler_of(params, 0).sample(
                rng_key, logdensity_fn, settings.monitor.num_draws, settings.num_steps
            )
            return draws.log_weight

        return jax.jit(score)

    def sampler_of(self, params, iteration) -> TrainedSampler:
        """The :class:`TrainedSampler` with the network weights ``params``."""
        return TrainedSampler(
            eqx.combine(params, self._static),
            self.whitening,
            self.settings.consistency,
            self.settings.sampling,
            jnp.asarray(iteration, jnp.int32),
            method=self.settings.method,
        )

    def serves(self, fingerprint: str, settings: Settings) -> bool:
        """Whether this training is for these model arguments and settings.

        The arguments' contents decide (``fingerprint``): data changed in place are
        new data.
        """
        return fingerprint == self.fingerprint and settings.trains_like(self.settings)

    @property
    def iterations(self) -> int:
        """Training iterations done so far."""
        return int(self.state.iteration)

    @property
    def is_trained(self) -> bool:
        """Whether the training has finished (a stopped or diverged one has too)."""
        done = self.iterations >= self.settings.train.total_steps
        return done or self.monitor.stop or self.stop_reason is not None

    def snapshot(self, keep_best: bool) -> Snapshot:
        """The monitor's best snapshot, or with ``keep_best=False`` the last one."""
        return self.monitor.chosen(keep_best)

    def trained(self, keep_best: bool) -> TrainedSampler:
        """The sampler of :meth:`snapshot`."""
        snapshot = self.snapshot(keep_best)
        return self.sampler_of(snapshot.params, snapshot.iteration)

    def train(self, progress_bar: bool) -> str | None:
        """Train until ``num_train_steps`` or until the monitor stops it.

        Resumes where an earlier call stopped; an interrupted call (Ctrl-C) keeps
        every completed chunk (and writes the checkpoint after each).

        Returns:
            None, or the diagnosis of a training that diverged and was stopped.
        """
        monitor = self.monitor
        if not self.is_trained:
            self._train(progress_bar)
        if not monitor.stop:
            return None
        best = monitor.best
        return (
            f"{monitor.diagnosis}. Training stopped there; the sampler draws with its "
            f"best snapshot (iteration {best.iteration}, held-out divergence "
            f"{best.divergence:.3g}). Lower learning_rate, or check the model's log "
            "density where the draws went."
        )

    @property
    def stop_reasons(self) -> dict[str, str]:
        """Why the training stopped before ``total_steps`` (``{"training": ...}``)."""
        return {} if self.stop_reason is None else {"training": self.stop_reason}

    def _stop_reason(self, iteration: int) -> str | None:
        """Why the training stops before its last iteration (not a divergence)."""
        train = self.settings.train
        if train.auto and iteration < train.total_steps:
            plateau = self.monitor.plateau(iteration)
            if plateau is not None:
                return f"stopped at iteration {iteration}: {plateau}"
        if train.max_time is not None and self.timings["training"] >= train.max_time:
            return (
                f"stopped at iteration {iteration}: max_time={train.max_time:g} s "
                "reached"
            )
        return None

    def _train(self, progress_bar: bool) -> None:
        monitor, train = self.monitor, self.settings.train
        trained_before = self.timings["training"]
        start = time.perf_counter()
        # Placed as the training chunks return it: the scoring and the first chunk
        # then compile once for every chunk.
        self.state = replicate(self.state)
        if monitor.best is None:
            monitor.observe(0, self.state.ema_params, None)

        def keep(state, info):
            self.state = state
            self.timings["training"] = trained_before + time.perf_counter() - start
            for name, values in info._asdict().items():
                self.losses[name] = np.concatenate([self.losses.get(name, []), values])
            iteration = int(state.iteration)
            monitor.observe(iteration, state.ema_params, info._asdict())
            self.stop_reason = self._stop_reason(iteration)
            if self._checkpoint is not None:
                self._write_checkpoint()
            shown = {"D": f"{monitor.latest.divergence:.3g}"}
            if train.auto:
                since = iteration - monitor.mark[0]
                shown["flat"] = f"{since}/{monitor.config.plateau_iterations}"
            return shown | {"stop": monitor.stop or self.stop_reason is not None}

        try:
            fit(
                self._train_key,
                self._algorithm.step,
                self.state,
                self._static,
                train.total_steps,
                chunk_size=train.chunk_size,
                progress_bar=progress_bar,
                on_chunk=keep,
                loss_name=self._algorithm.loss_name,
            )
        except KeyboardInterrupt:
            print(
                f"Training interrupted at iteration {self.iterations}; call run() "
                "again with the same arguments to resume."
            )
            raise
        finally:
            self.timings["training"] = trained_before + time.perf_counter() - start


def save_session(path: str, session, keep_best: bool):
    """Write the sampler of ``session`` with what :class:`LoadedSession` checks."""
    snapshot = session.snapshot(keep_best)
    header = {
        "settings": session.settings.to_json(),
        "model_arguments_sha256": session.fingerprint,
        "sites": session.target.site_layout(),
        "library_version": __version__,
        "training_iterations": session.iterations,
        "snapshot_divergence": snapshot.divergence,
        "losses": _losses_to_json(session.losses),
        "timings": dict(session.timings),
    }
    save_trained(path, session.trained(keep_best), header)


def read_saved_settings(path: str) -> Settings:
    """The settings recorded in a file written by :func:`save_session`.

    Raises:
        ValueError: not a saved sampler, or a damaged header.
    """
    header = read_trained_header(path)
    try:
        return Settings.from_json(header["settings"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"Saved sampler {path!r} is damaged: {error!r}.") from None


#: The ``CDSInference`` keywords a saved sampler accepts: what happens after training.
DRAWING_KEYWORDS = (
    "num_samples",
    "num_chains",
    "num_steps",
    "progress_bar",
    "correction",
    "correction_steps",
    "correction_pool",
)


def saved_keywords(path: str, drawing: dict) -> dict:
    """``CDSInference`` keywords for the sampler saved at ``path``.

    Its settings, and the drawing keywords given.

    Raises:
        TypeError: a training setting among ``drawing``.
        ValueError: not a saved sampler, or a damaged file.
    """
    training = sorted(set(drawing) - set(DRAWING_KEYWORDS))
    if training:
        raise TypeError(
            f"CDSInference.load takes drawing settings only {list(DRAWING_KEYWORDS)}; "
            f"{training} are training settings, fixed by the saved sampler. Train a "
            "new CDSInference to change them."
        )
    settings = read_saved_settings(path)
    distilled = settings.method == "cdds"  # the only method with a teacher_method
    return {
        "sampling": settings.sampling,
        "whitening": settings.whitening,
        "consistency": settings.consistency,
        "train": settings.train,
        "monitor": settings.monitor,
        "num_steps": settings.num_steps,
        "method": settings.method,
        "teacher_method": settings.teacher_method if distilled else None,
        **drawing,
    }


def open_session(
    rng_key,
    model,
    args,
    kwargs,
    settings,
    optimizer,
    checkpoint,
    saved_path,
    teacher,
    init=None,
    init_teacher=None,
) -> TrainingSession | DistillationSession | LoadedSession | AcceptedInitSession:
    """The session that draws for a ``CDSInference``.

    A :class:`LoadedSession` of ``saved_path``; a warm start from ``init``
    (:mod:`numpyro_cds.warm_start`) whose earlier sampler is reliable on these data,
    an :class:`AcceptedInitSession`; otherwise a new (or resumed from ``checkpoint``)
    :class:`TrainingSession`, started from ``init`` if given, or for CDDS without a
    ``teacher`` a :class:`DistillationSession` that trains one first (from
    ``init_teacher``, an earlier CDDS fit's teacher, if given).
    """
    if saved_path is not None:
        return LoadedSession(rng_key, model, args, kwargs, saved_path)
    if init is not None:
        start = time.perf_counter()
        target = target_from_model(jax.random.split(rng_key, 4)[0], model, args, kwargs)
        init = resolve_init(init, target, settings)
        log_weights = init_log_weights(
            jax.random.fold_in(rng_key, 2), init, target, settings
        )
        if summarize_weights(log_weights).reliable:
            return AcceptedInitSession(
                target,
                arguments_fingerprint(args, kwargs),
                settings,
                init,
                log_weights,
                time.perf_counter() - start,
            )
    if settings.method == "cdds" and teacher is None:
        return DistillationSession(
            rng_key,
            model,
            args,
            kwargs,
            settings,
            optimizer,
            checkpoint,
            init,
            init_teacher,
        )
    return TrainingSession(
        rng_key, model, args, kwargs, settings, optimizer, checkpoint, teacher, init
    )


class DistillationSession:
    """CDDS without a given teacher: a teacher is trained first, then distilled.

    The teacher has the same settings but ``method=settings.teacher_method`` (DDS by
    default, or DIS) and draws with its SDE (its checkpoint, if any, is
    ``checkpoint + ".teacher"``); the student then trains as a :class:`TrainingSession`
    with the teacher's best snapshot, ``num_train_steps`` iterations more.  Both resume
    after an interruption.  The draws, losses and snapshot are the student's; the
    teacher's losses are kept with the prefix ``teacher_`` and its training time as
    ``timings["teacher_training"]``.  In a warm start (``init``) the teacher uses the
    earlier fit's whitening and starts from ``init_teacher`` if given (else from
    scratch), and the student starts from the earlier student.
    """

    def __init__(
        self,
        rng_key,
        model,
        args,
        kwargs,
        settings,
        optimizer,
        checkpoint,
        init=None,
        init_teacher=None,
    ):
        teacher_key, self._student_key = jax.random.split(rng_key)
        self.settings = settings
        teacher_settings = dataclasses.replace(
            settings,
            method=settings.teacher_method,
            sampling="sde",
            num_steps=settings.consistency.num_sde_steps,
        )
        teacher_checkpoint = None if checkpoint is None else f"{checkpoint}.teacher"
        self.teacher_session = TrainingSession(
            teacher_key,
            model,
            args,
            kwargs,
            teacher_settings,
            optimizer,
            teacher_checkpoint,
            init=init_teacher,
            whitening=None if init is None else init.whitening,
        )
        self._init = init
        self._student_inputs = (model, args, kwargs, settings, optimizer, checkpoint)
        self.student: TrainingSession | None = None
        self._timings = {"training": 0.0}
        self.target = self.teacher_session.target
        self.whitening = self.teacher_session.whitening
        self.fingerprint = self.teacher_session.fingerprint

    def serves(self, fingerprint: str, settings: Settings) -> bool:
        """As :meth:`TrainingSession.serves`."""
        return fingerprint == self.fingerprint and settings.trains_like(self.settings)

    def train(self, progress_bar: bool) -> str | None:
        """Train (or resume) the teacher, then the student; their diagnoses, if any."""
        teacher_diagnosis = self.teacher_session.train(progress_bar)
        if self.student is None:
            model, args, kwargs, settings, optimizer, checkpoint = self._student_inputs
            self.student = TrainingSession(
                self._student_key,
                model,
                args,
                kwargs,
                settings,
                optimizer,
                checkpoint,
                self.teacher_session.trained(keep_best=True),
                self._init,
            )
        diagnoses = [self.student.train(progress_bar)]
        if teacher_diagnosis is not None:
            teacher = self.settings.teacher_method.upper()
            diagnoses.insert(0, f"The {teacher} teacher: {teacher_diagnosis}")
        return " ".join(d for d in diagnoses if d is not None) or None

    @property
    def is_trained(self) -> bool:
        """Whether the student's training has finished."""
        return self.student is not None and self.student.is_trained

    @property
    def iterations(self) -> int:
        """The student's training iterations."""
        return 0 if self.student is None else self.student.iterations

    @property
    def losses(self) -> dict[str, np.ndarray]:
        """The student's losses, and the teacher's with the prefix ``teacher_``."""
        teacher = {f"teacher_{k}": v for k, v in self.teacher_session.losses.items()}
        return {**teacher, **({} if self.student is None else self.student.losses)}

    @property
    def timings(self) -> dict[str, float]:
        """The whitening fit, the teacher's and the student's training, the draws."""
        teacher = self.teacher_session.timings
        self._timings["whitening"] = teacher["whitening"]
        self._timings["teacher_training"] = teacher["training"]
        if self.student is not None:
            self._timings["training"] = self.student.timings["training"]
        return self._timings

    @property
    def stop_reasons(self) -> dict[str, str]:
        """Why the teacher (``"teacher"``) and the student stopped early, if so."""
        teacher = self.teacher_session.stop_reasons.items()
        reasons = {f"teacher_{k}": v for k, v in teacher}
        return reasons | ({} if self.student is None else self.student.stop_reasons)

    def snapshot(self, keep_best: bool) -> Snapshot:
        """The student's snapshot (see :meth:`TrainingSession.snapshot`)."""
        return self.student.snapshot(keep_best)

    def trained(self, keep_best: bool) -> TrainedSampler:
        """The student's sampler."""
        return self.student.trained(keep_best)


class _FixedSamplerSession:
    """The face of a session whose sampler is given: nothing to train."""

    is_trained = True
    _sampler: TrainedSampler
    _divergence: float

    def snapshot(self, keep_best: bool) -> Snapshot:
        """The sampler's snapshot (whatever ``keep_best``: it is the only one)."""
        params = eqx.filter(self._sampler.network, eqx.is_inexact_array)
        return Snapshot(int(self._sampler.iteration), self._divergence, params)

    def trained(self, keep_best: bool) -> TrainedSampler:
        """The sampler."""
        return self._sampler

    def train(self, progress_bar: bool) -> None:
        """Nothing to do: the sampler is trained (returns no diagnosis)."""


class LoadedSession(_FixedSamplerSession):
    """A sampler read from a file of :func:`save_session`, checked against the model.

    Raises:
        ValueError: the file was written for another dimension, other sites or
            other model arguments (each difference is named), or is damaged.
    """

    #: The file keeps no reasons for an early stop.
    stop_reasons: dict[str, str] = {}  # noqa: RUF012 (never mutated)

    def __init__(self, rng_key, model, args, kwargs, path: str):
        target_key = jax.random.split(rng_key, 4)[0]
        self.target = target_from_model(target_key, model, args, kwargs)
        self.fingerprint = arguments_fingerprint(args, kwargs)
        expected = {
            "dim": self.target.dim,
            "sites": self.target.site_layout(),
            "model_arguments_sha256": self.fingerprint,
        }
        self._sampler, header = load_trained(path, expected)
        self.settings = read_saved_settings(path)
        self.whitening = self._sampler.whitening
        self.losses = _losses_from_json(header["losses"])
        self.timings = dict(header["timings"])
        self.iterations = int(header["training_iterations"])
        self._divergence = header["snapshot_divergence"]

    def serves(self, fingerprint: str, settings: Settings) -> bool:
        """Whether the file was read for these model arguments.

        The settings are the file's, whatever ``settings``.
        """
        return fingerprint == self.fingerprint


class AcceptedInitSession(_FixedSamplerSession):
    """A warm start whose earlier sampler is reliable on the new data: no training.

    Args:
        target: the model's flat target on the new data.
        fingerprint: the new model arguments' fingerprint.
        settings: the refit's settings.
        init: the earlier sampler (checked by :func:`~numpyro_cds.warm_start.
            resolve_init`).
        log_weights: its held-out log weights on the new posterior.
        seconds: the time the check took (``timings["training"]``).
    """

    def __init__(self, target, fingerprint, settings, init, log_weights, seconds):
        summary = summarize_weights(log_weights)
        self.target, self.fingerprint, self.settings = target, fingerprint, settings
        self._sampler = init
        self._divergence = renyi_half_divergence(log_weights)
        self.whitening = init.whitening
        self.losses: dict[str, np.ndarray] = {}
        self.timings = {"whitening": 0.0, "training": seconds}
        self.iterations = 0
        self.stop_reasons = {
            "training": "skipped: the warm start's sampler (init) is reliable on "
            f"these data (held-out k-hat {summary.pareto_k:.2f} <= 0.7, ESS "
            f"{summary.ess:.2f})"
        }

    def serves(self, fingerprint: str, settings: Settings) -> bool:
        """As :meth:`TrainingSession.serves`."""
        return fingerprint == self.fingerprint and settings.trains_like(self.settings)
