"""Teachers of the consistency distillation: where they come from, what they must be.

A CDDS student distils a trained sampler, its *teacher*: a
:class:`~numpyro_cds.trained.TrainedSampler` in memory (``cds.trained`` of a DIS,
SCDS or DDS ``CDSInference``) or the path of one saved by ``cds.save``.  A saved
teacher is checked against the model and data like any saved sampler (another
model's, or other data's, is refused with the difference named); either kind must
have the student's network shape and fine steps, since the student starts as a copy
of it.
"""

from __future__ import annotations

import hashlib
import os

import equinox as eqx
import jax
import numpy as np

from .target import Target
from .trained import TrainedSampler, load_trained

__all__ = [
    "TEACHER_FIELDS",
    "TEACHER_METHODS",
    "network_differences",
    "resolve_teacher",
    "sampler_fingerprint",
]

#: The methods whose samplers can teach: their control defines a probability flow
#: (the time reversal of the VP noising, whose marginals it shares).  PIS's does not.
TEACHER_METHODS = ("dis", "scds", "dds")
#: Settings the student shares with its teacher (it starts as a copy of its network).
TEACHER_FIELDS = ("num_sde_steps", "width", "depth")


def sampler_fingerprint(sampler: TrainedSampler) -> str:
    """SHA-256 of a sampler's arrays (network and whitening), shapes and dtypes."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(eqx.filter(sampler, eqx.is_array)):
        array = np.asarray(leaf)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def network_differences(sampler: TrainedSampler, settings, label: str) -> list[str]:
    """``"name value (label: value)"`` for each :data:`TEACHER_FIELDS` that differs.

    Args:
        sampler: a trained sampler.
        settings: the :class:`~numpyro_cds.session.Settings` of a fit that starts
            from its network.
        label: what that fit is called in the message.
    """
    return [
        f"{name} {getattr(sampler.config, name)} ({label}: "
        f"{getattr(settings.consistency, name)})"
        for name in TEACHER_FIELDS
        if getattr(sampler.config, name) != getattr(settings.consistency, name)
    ]


def resolve_teacher(
    source: TrainedSampler | str | os.PathLike,
    target: Target,
    fingerprint: str,
    settings,
) -> TrainedSampler:
    """The teacher of a CDDS training, checked against the model and the settings.

    Args:
        source: a :class:`~numpyro_cds.trained.TrainedSampler`, or the path of a file
            written by ``CDSInference.save``.
        target: the model's flat target.
        fingerprint: the model arguments' fingerprint
            (:func:`~numpyro_cds.checkpoint.arguments_fingerprint`).
        settings: the student's :class:`~numpyro_cds.session.Settings`.

    Raises:
        TypeError: ``source`` is neither.
        ValueError: a file saved for another model, other data or another dimension,
            or a teacher whose :data:`TEACHER_FIELDS` differ from the student's (each
            difference named).
    """
    if isinstance(source, (str, os.PathLike)):
        expected = {
            "dim": target.dim,
            "sites": target.site_layout(),
            "model_arguments_sha256": fingerprint,
        }
        teacher, _ = load_trained(os.fspath(source), expected)
    elif isinstance(source, TrainedSampler):
        teacher = source
    else:
        raise TypeError(
            "method='cdds' distils a teacher: pass teacher= a TrainedSampler "
            "(cds.trained of a trained DIS, SCDS or DDS CDSInference, or "
            "cds.trained_teacher of a CDDS one) or the path of one saved with "
            f"cds.save(path); got {type(source).__name__}."
        )
    if teacher.method not in TEACHER_METHODS:
        raise ValueError(
            f"A {teacher.method.upper()} sampler cannot be a CDDS teacher: CDDS "
            "distils the probability-flow ODE of a DIS, SCDS or DDS sampler. Pass "
            "one of those (or no teacher: CDDS then trains one, teacher_method)."
        )
    if teacher.dim != target.dim:
        raise ValueError(
            f"The teacher samples {teacher.dim} dimensions; this model has "
            f"{target.dim} unconstrained dimensions. Distil a teacher of this model."
        )
    differ = network_differences(teacher, settings, "student")
    if differ:
        raise ValueError(
            f"The teacher's settings differ from the student's: {', '.join(differ)}. "
            "The student starts as a copy of the teacher's network: pass the "
            "teacher's values."
        )
    return teacher
