"""The results faces of ``CDSInference``: the training's, and the draws' as ``MCMC``'s.

:class:`TrainingResults` reads what the training produced from the driver's session
(target, whitening, losses, timings, the snapshot and the
:class:`~numpyro_cds.trained.TrainedSampler`).  :class:`MCMCResults` subclasses
:class:`numpyro.infer.MCMC` (so ``arviz.from_numpyro``,
:class:`~numpyro.infer.Predictive` and ``print_summary`` work unchanged) and holds what
``MCMC`` users touch after ``run``: the draws and their extra fields, grouped by chain,
the evidence, the summary, ArviZ data, and the chain-state members that have no meaning
for independent draws (they fail with a message naming what to use instead).  The
driver (:class:`~numpyro_cds.infer.CDSInference`) fills ``_samples``,
``_extra_fields``, ``weights_summary`` and ``_session``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import print_summary as _numpyro_print_summary
from numpyro.infer import MCMC

from .monitor import Snapshot
from .report import draws_description, summary_text
from .target import Target
from .trained import TrainedSampler
from .whitening import AffineWhitening

__all__ = ["EXTRA_FIELDS", "MCMCResults", "ModelView", "TrainingResults"]

#: Extra fields of every draw: the log density, the sampler's log density, the
#: importance log weight and the (always False) divergence flag that ArviZ reads.
EXTRA_FIELDS = ("lp", "log_q", "log_weight", "diverging")


class ModelView(NamedTuple):
    """What ArviZ reads as ``posterior.sampler`` (the model)."""

    model: Callable


class TrainingResults:
    """What the training produced, read from the driver's session (``_session``)."""

    _session = None

    def _require_session(self):
        if self._session is None:
            raise RuntimeError("Call run(rng_key, *args, **kwargs) first.")
        return self._session

    def _require_trained(self):
        if not self.is_trained:
            raise RuntimeError(
                "The sampler is not trained: call run(rng_key, *args, **kwargs) first "
                "(or again, to finish an interrupted training)."
            )

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
        sampler read by ``load``.
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
    def trained_teacher(self) -> TrainedSampler | None:
        """The teacher a CDDS run without ``teacher=`` trained, else None.

        Its best snapshot, which the student was distilled from: pass it as
        ``teacher=`` to distil again (other student settings) without retraining it.
        """
        teacher_session = getattr(self._require_session(), "teacher_session", None)
        if teacher_session is None:
            return None
        return teacher_session.trained(keep_best=True)

    @property
    def log_det_method(self) -> str:
        """How log-determinants are computed: ``"exact"`` or ``"stochastic"``."""
        return self.trained.log_det_method


class MCMCResults(TrainingResults, MCMC):
    """Draws, extra fields, evidence, summary and ArviZ data, shaped like ``MCMC``'s.

    Attributes:
        weights_summary: the :class:`~numpyro_cds.importance.ImportanceSummary` of the
            last ``run``'s draws (None before).
        correction_info: the last ``run``'s correction (acceptance rate, step size
            and gradient evaluations of its MALA moves; empty without).
    """

    weights_summary = None
    correction_info: dict = {}  # noqa: RUF012 (replaced by each run, never mutated)
    _samples = None
    _extra_fields = None

    def log_evidence(self) -> tuple[float, float]:
        """``(log Z estimate, standard error)`` from the draws' importance weights.

        ``Z`` is the normalising constant of the model's density over its latent
        sites given the data, i.e. the marginal likelihood when the model's priors
        are normalised.
        """
        if self.weights_summary is None:
            raise RuntimeError("No draws yet: call run(rng_key, *args, **kwargs).")
        return self.weights_summary.log_evidence, self.weights_summary.standard_error

    def _check_run_options(self, extra_fields, init_params) -> None:
        """Check ``MCMC.run``'s options that are not the model's arguments."""
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

    def _constrain(self, xs):
        return jax.vmap(self.target.postprocess_fn)(xs)

    def _keep(self, draws) -> None:
        """Keep the flat ``draws`` as constrained samples and extra fields."""
        total = draws.x.shape[0]
        fields = (draws.lp, draws.log_q, draws.log_weight, jnp.zeros(total, bool))
        self._extra_fields = dict(zip(EXTRA_FIELDS, fields, strict=True))
        self._samples = jax.block_until_ready(self._constrain(draws.x))

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
        kind = (
            "Euler-Maruyama path weights"
            if self.sampling == "sde"
            else f"{self.log_det_method} log-determinants"
        )
        text = summary_text(
            iterations=self.training_iterations,
            seconds=self.timings.get("training", 0.0),
            losses=self.training_losses,
            loss_name=self.settings.loss_name,
            chunk_size=self.train_config.chunk_size,
            snapshot=self.snapshot,
            description=draws_description(self.num_steps, self.sampling),
            summary=self.weights_summary,
            weights_kind=kind,
            correction=self.correction,
            correction_steps=self.correction_steps,
            correction_info=self.correction_info,
            teacher=self._teacher_training(),
            stopped=self._require_session().stop_reasons,
        )
        print(text)

    def _teacher_training(self) -> tuple[str, int, float] | None:
        """Method, iterations and seconds of the teacher this run trained, if any."""
        if "teacher_training" not in self.timings:
            return None
        losses = self.training_losses
        iterations = max(len(v) for k, v in losses.items() if k.startswith("teacher_"))
        method = self.settings.teacher_method.upper()
        return method, iterations, self.timings["teacher_training"]
