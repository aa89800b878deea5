"""A trained sampler as one value: draw and weigh with it, save it, load it.

:class:`TrainedSampler` holds everything a draw needs: the whitening, the control
network's (EMA) weights, the noise schedule and the sampler's settings.  It does not
hold the model: the target's log density is an argument of :meth:`TrainedSampler.
sample` (it enters the importance weights, and the control's Langevin term at small
steps), so the same value draws for any data the caller checked it against.

:func:`save_trained` writes it in the checkpoint format (:mod:`numpyro_cds.checkpoint`:
a JSON header and ``.npy`` arrays, never pickle); :func:`load_trained` reads it back
into a template built from the header, after the caller's checks of the header.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .arguments import check_count, check_num_steps
from .checkpoint import read_checkpoint, read_header, write_checkpoint
from .consistency import ConsistencyConfig, draw_network
from .distillation import draw_consistency
from .networks import ControlNetwork
from .reference import REFERENCE_METHODS, ReferenceProcess, draw_reference
from .sde import AbstractSchedule, LinearSchedule
from .sharding import gathered
from .whitening import AffineWhitening

__all__ = [
    "EXACT_LOG_DET_MAX_DIM",
    "Draws",
    "TrainedSampler",
    "config_from_json",
    "load_trained",
    "read_trained_header",
    "save_trained",
]

#: Largest dimension with exact log-determinants in the importance weights
#: (``jacfwd`` + ``slogdet``: ``dim`` forward passes per step and draw); above it the
#: log-determinants are unbiased stochastic estimates.
EXACT_LOG_DET_MAX_DIM = 200

_SAMPLINGS = ("flow", "sde")


class Draws(NamedTuple):
    """Draws of a :class:`TrainedSampler` in the target's unconstrained space.

    Attributes:
        x: flat unconstrained draws, shape ``(num_samples, dim)``.
        lp: the target's log density at each draw.
        log_q: the sampler's log density at each draw (None without weights): the
            k-step flow's (change of variables) or, for SDE draws, the path's log
            density ratio, whose ``exp(-log_q)`` estimates ``1 / q`` unbiasedly.
        log_weight: ``lp - log_q``, the importance log weight (None without weights).
        step_signs: sign of each flow step's Jacobian determinant at each draw,
            shape ``(num_steps, num_samples)`` (flow draws with weights only; see
            :func:`~numpyro_cds.flow.folded_steps`).
    """

    x: Float[Array, "num_samples dim"]
    lp: Float[Array, " num_samples"]
    log_q: Float[Array, " num_samples"] | None = None
    log_weight: Float[Array, " num_samples"] | None = None
    step_signs: Float[Array, "num_steps num_samples"] | None = None


class TrainedSampler(eqx.Module):
    """The trained sampler: whitening, control network, schedule and settings.

    Attributes:
        network: the control network that draws (the EMA weights of a snapshot).
        whitening: the affine map from the whitened to the unconstrained space.
        config: the sampler's settings.
        sampling: ``"flow"`` (probability-flow steps, change-of-variables weights) or
            ``"sde"`` (Euler-Maruyama steps, path weights).
        iteration: the training iteration of the snapshot (0: the untrained
            network, which draws from the whitening Gaussian).
        schedule: the noise schedule the network was trained with.
        method: the training method (:data:`~numpyro_cds.session.METHODS`); PIS and
            DDS draw with their own SDE and reference-process path weights
            (:func:`~numpyro_cds.reference.draw_reference`).
    """

    network: ControlNetwork
    whitening: AffineWhitening
    config: ConsistencyConfig = eqx.field(static=True)
    sampling: str = eqx.field(static=True, default="flow")
    iteration: Array = eqx.field(default_factory=lambda: jnp.zeros((), jnp.int32))
    schedule: AbstractSchedule = LinearSchedule()
    method: str = eqx.field(static=True, default="scds", kw_only=True)

    def __check_init__(self):
        if self.method in REFERENCE_METHODS and self.sampling != "sde":
            raise ValueError(
                f"A {self.method.upper()} sampler draws with its SDE: sampling must be "
                f"'sde', got {self.sampling!r}."
            )
        if self.sampling not in _SAMPLINGS:
            raise ValueError(
                "sampling must be 'flow' (probability-flow steps) or 'sde' "
                f"(Euler-Maruyama steps with path weights); got {self.sampling!r}."
            )

    @property
    def dim(self) -> int:
        """Dimension of the flat unconstrained latent vector."""
        return int(self.whitening.loc.shape[0])

    @property
    def log_det_method(self) -> str:
        """How flow log-determinants are computed: ``"exact"`` or ``"stochastic"``."""
        return "exact" if self.dim <= EXACT_LOG_DET_MAX_DIM else "stochastic"

    @property
    def weights_are_exact(self) -> bool:
        """Whether each weight is exact up to folds (flow with exact log-dets)."""
        return self.sampling == "flow" and self.log_det_method == "exact"

    def sample(
        self,
        rng_key: PRNGKeyArray,
        logdensity_fn: Callable,
        num_samples: int,
        num_steps: int,
        weights: bool = True,
    ) -> Draws:
        """Draw ``num_samples`` with ``num_steps`` steps each (compiled once per shape).

        Args:
            rng_key: PRNG key.
            logdensity_fn: the target's unnormalised log density of one flat
                unconstrained vector (e.g. :attr:`~numpyro_cds.target.Target.
                logdensity_fn`).  Pass the same function object each time to reuse
                the compiled draw.
            num_samples: number of draws.
            num_steps: steps per draw, a power of two up to ``config.num_sde_steps``.
            weights: also compute ``log_q`` and the importance log weights (SDE draws
                always have them: they cost nothing extra).

        Returns:
            The :class:`Draws`.

        Raises:
            TypeError, ValueError: ``num_samples`` not a positive int, or
                ``num_steps`` not a power of two up to ``config.num_sde_steps``.
        """
        num_samples = check_count("num_samples", num_samples)
        num_steps = check_num_steps(num_steps, self.config.num_sde_steps)
        if self.sampling == "sde":
            kind = "path"
        else:
            kind = self.log_det_method if weights else None
        return _draw(self, rng_key, logdensity_fn, num_samples, num_steps, kind)


def _draw_uncompiled(
    sampler, rng_key, logdensity_fn, num_samples, num_steps, kind
) -> Draws:
    whitening = sampler.whitening
    whitened = whitening.whitened_logdensity(logdensity_fn)
    if sampler.method in REFERENCE_METHODS:
        draws = draw_reference(
            rng_key,
            sampler.network,
            ReferenceProcess(sampler.method, sampler.schedule),
            whitened,
            sampler.config,
            num_samples,
            num_steps,
        )
    else:
        # CDDS draws with consistency steps, SCDS and DIS with flow or SDE steps.
        draw = draw_consistency if sampler.method == "cdds" else draw_network
        draws = draw(
            rng_key,
            sampler.network,
            whitened,
            sampler.config,
            num_samples,
            num_steps,
            kind,
            sampler.schedule,
        )
    if kind is None:
        x = whitening.unwhiten(draws)
        return gathered(Draws(x, jax.vmap(logdensity_fn)(x)))
    x = whitening.unwhiten(draws.x)
    lp = jax.vmap(logdensity_fn)(x)
    log_q = draws.log_density - whitening.log_det
    signs = None if kind == "path" else draws.step_signs
    return gathered(Draws(x, lp, log_q, lp - log_q, signs))


#: :meth:`TrainedSampler.sample`'s compiled draw; ``eqx.debug.get_num_traces(
#: _traced_draw)`` counts its traces (tests check that a repeated call adds none).
_traced_draw = eqx.debug.assert_max_traces(_draw_uncompiled, max_traces=None)
_draw = eqx.filter_jit(_traced_draw)


def config_from_json(cls, fields: dict):
    """A config dataclass from its JSON form (lists back to tuples).

    Raises:
        ValueError: a field the dataclass does not have (a file from another
            version).
    """
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}.")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def save_trained(path: str, sampler: TrainedSampler, header: dict) -> None:
    """Write ``sampler`` and ``header`` to ``path`` (checkpoint format, no pickle).

    The header gets the fields needed to rebuild the arrays' template: the dimension,
    the sampler's settings, its sampling kind and snapshot iteration, its network's
    score form and the shape of the whitening's scale.
    """
    header = {
        **header,
        "kind": "trained_sampler",
        "dim": sampler.dim,
        "consistency": dataclasses.asdict(sampler.config),
        "sampling": sampler.sampling,
        "method": sampler.method,
        "score_form": sampler.network.score_form,
        "snapshot_iteration": int(sampler.iteration),
        "whitening_scale_shape": list(sampler.whitening.scale.shape),
    }
    arrays = {"network": sampler.network, "whitening": sampler.whitening}
    write_checkpoint(path, header, eqx.filter(arrays, eqx.is_array))


def read_trained_header(path: str) -> dict:
    """The header of a file written by :func:`save_trained` (no arrays are read).

    Raises:
        ValueError: not a numpyro_cds file, or not a saved sampler (e.g. a training
            checkpoint).
    """
    header = read_header(path)
    if header.get("kind") != "trained_sampler":
        raise ValueError(
            f"{path!r} is not a saved sampler (it is a training checkpoint or another "
            "file); pass a file written by CDSInference.save."
        )
    return header


def load_trained(path: str, expected: dict) -> tuple[TrainedSampler, dict]:
    """Read a sampler written by :func:`save_trained`, refusing any mismatch.

    Args:
        path: the file.
        expected: header fields that must equal the file's (e.g. the dimension, the
            model arguments' fingerprint and the site layout); each difference is
            named in the error.

    Returns:
        ``(sampler, header)``.

    Raises:
        ValueError: not a numpyro_cds file, not a saved sampler (e.g. a training
            checkpoint), damaged, or written for something else.
    """
    header = read_trained_header(path)
    try:
        config = config_from_json(ConsistencyConfig, header["consistency"])
        dim = int(header["dim"])
        shape = tuple(header["whitening_scale_shape"])
        method = str(header["method"])
        score_form = str(header["score_form"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"Saved sampler {path!r} is damaged: {error}") from None
    network = ControlNetwork(
        dim,
        width=config.width,
        depth=config.depth,
        score_form=score_form,
        state_scale=config.state_scale,
        key=jax.random.key(0),
    )
    whitening = AffineWhitening(jnp.zeros(dim), jnp.zeros(shape))
    like = {"network": network, "whitening": whitening}
    arrays_like = eqx.filter(like, eqx.is_array)
    header, arrays = read_checkpoint(path, expected, arrays_like, action="loaded")
    arrays = eqx.combine(arrays, like)
    sampler = TrainedSampler(
        arrays["network"],
        arrays["whitening"],
        config,
        header["sampling"],
        jnp.asarray(int(header["snapshot_iteration"]), jnp.int32),
        method=method,
    )
    return sampler, header
