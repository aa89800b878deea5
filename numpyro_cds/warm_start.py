"""Warm starts: a refit on new data that starts from an earlier fit, when asked to.

``CDSInference(model, init=previous.trained)`` (or the path of ``previous.save``)
refits on the data given to ``run`` starting from ``previous``'s sampler.  It is
never implicit: without ``init`` every fit starts cold.

1. The earlier sampler is checked against the model (dimension, unconstrained sites)
   and the settings (method, sampling, network shape); its data may differ, that is
   the point.
2. It is scored on the new posterior: :attr:`~numpyro_cds.monitor.MonitorConfig.
   num_draws` held-out draws (one fixed key) weighed by the new target.  When their
   weights are reliable (PSIS k-hat at most 0.7, :attr:`~numpyro_cds.importance.
   ImportanceSummary.reliable`) no training is done: the earlier sampler draws, and
   its importance weights (exact, against the new posterior) drive the correction, as
   for any fit.
3. Otherwise the training starts from its whitening (no whitening fit) and its
   network weights; a CDDS fit trains a new teacher on that whitening first (the
   earlier fit's teacher is not kept), and the student starts from the earlier
   student.  The training monitor scores the starting point too, so the refit
   sampler is never worse than it on the held-out score.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from .target import Target
from .teachers import network_differences
from .trained import TrainedSampler, load_trained

__all__ = ["init_log_weights", "resolve_init"]


def resolve_init(
    source: TrainedSampler | str | os.PathLike, target: Target, settings
) -> TrainedSampler:
    """The earlier sampler of a warm start, checked against the model and settings.

    Args:
        source: a :class:`~numpyro_cds.trained.TrainedSampler` (``cds.trained``) or
            the path of a file written by ``CDSInference.save``; trained on any data
            of this model.
        target: the model's flat target on the new data.
        settings: the refit's :class:`~numpyro_cds.session.Settings`.

    Raises:
        TypeError: ``source`` is neither.
        ValueError: another dimension or other sites, another method or sampling, or
            another network shape (each difference named).
    """
    if isinstance(source, (str, os.PathLike)):
        expected = {"dim": target.dim, "sites": target.site_layout()}
        init, _ = load_trained(os.fspath(source), expected)
    elif isinstance(source, TrainedSampler):
        init = source
    else:
        raise TypeError(
            "init is the earlier fit to start from: a TrainedSampler (cds.trained of "
            "a trained CDSInference) or the path of one saved with cds.save(path); "
            f"got {type(source).__name__}."
        )
    if init.dim != target.dim:
        raise ValueError(
            f"init samples {init.dim} dimensions; this model has {target.dim} "
            "unconstrained dimensions. Start from a fit of this model."
        )
    differ = [
        f"{name} {getattr(init, name)!r} (this fit: {getattr(settings, name)!r})"
        for name in ("method", "sampling")
        if getattr(init, name) != getattr(settings, name)
    ]
    differ += network_differences(init, settings, "this fit")
    if differ:
        raise ValueError(
            f"init differs from this fit's settings: {', '.join(differ)}. A warm "
            "start continues the earlier sampler: pass its settings."
        )
    return init


def init_log_weights(rng_key, init: TrainedSampler, target: Target, settings):
    """The earlier sampler's importance log weights on the new posterior.

    ``settings.monitor.num_draws`` draws with ``settings.num_steps`` steps, as a
    NumPy array.
    """
    draws = init.sample(
        rng_key, target.logdensity_fn, settings.monitor.num_draws, settings.num_steps
    )
    return np.asarray(jax.device_get(draws.log_weight))
