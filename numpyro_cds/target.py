"""A NumPyro model becomes a flat log density on the unconstrained space, and back.

:func:`target_from_model` uses NumPyro's public
:func:`~numpyro.infer.util.initialize_model` (whose potential includes the log-Jacobian
of the constraining transforms) and :func:`jax.flatten_util.ravel_pytree`.  Draws go
back through NumPyro's postprocessing, so that constrained and deterministic sites come
out as :meth:`numpyro.infer.MCMC.get_samples` returns them.  Bad models fail here,
before any training, with an error that names the site and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import initialize_model

__all__ = ["Target", "target_from_model"]


class Target(NamedTuple):
    """A model's posterior as a flat, unnormalised log density.

    Attributes:
        logdensity_fn: log density (positive, unnormalised) of one flat unconstrained
            vector of shape ``(dim,)``.
        dim: number of unconstrained latent dimensions.
        unravel_fn: flat vector -> dict of unconstrained sites.
        postprocess_fn: flat vector -> dict of constrained latent and deterministic
            sites, as :meth:`numpyro.infer.MCMC.get_samples` returns them.
        init_positions: valid starting points drawn by NumPyro's ``init_to_uniform``,
            shape ``(num_inits, dim)``.
    """

    logdensity_fn: Callable[[Float[Array, " dim"]], Float[Array, ""]]
    dim: int
    unravel_fn: Callable
    postprocess_fn: Callable
    init_positions: Float[Array, "num_inits dim"]

    def site_layout(self) -> dict[str, list[int]]:
        """Names and shapes of the unconstrained latent sites (JSON-ready)."""
        sites = self.unravel_fn(jnp.zeros(self.dim))
        return {name: list(jnp.shape(value)) for name, value in sites.items()}


def _trace_at_init(model, model_args, model_kwargs, rng_key) -> dict[str, dict]:
    """Trace of the model with latent values from ``init_to_uniform``."""
    substituted = numpyro.handlers.substitute(
        numpyro.handlers.seed(model, rng_seed=rng_key), substitute_fn=init_to_uniform
    )
    try:
        return numpyro.handlers.trace(substituted).get_trace(
            *model_args, **model_kwargs
        )
    except Exception as error:  # the user's model raised: say so, keep the cause
        lists = _python_lists(model_args, model_kwargs)
        advice = (
            f"Pass data as arrays, not Python lists ({', '.join(lists)}): e.g. "
            "jnp.asarray(y)"
            if lists
            else "Check the arguments passed to run(): their number, types and shapes"
        )
        raise TypeError(
            "Running the model with the given arguments failed "
            f"({type(error).__name__}: {error}). {advice}."
        ) from error


def _python_lists(model_args: tuple, model_kwargs: dict) -> list[str]:
    """The model arguments that are Python lists or tuples of numbers, named."""

    def numeric_list(value):
        return isinstance(value, (list, tuple)) and all(
            isinstance(item, (int, float, list, tuple)) for item in value
        )

    named = [(f"positional argument {i}", a) for i, a in enumerate(model_args)]
    named += [(f"argument {k!r}", value) for k, value in model_kwargs.items()]
    return [name for name, value in named if value and numeric_list(value)]


def _latent_sites(trace: dict[str, dict]) -> dict[str, dict]:
    return {
        name: site
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def _check_discrete_sites(sites: dict[str, dict]) -> None:
    for name, site in sites.items():
        if site["fn"].is_discrete and site["infer"].get("enumerate") != "parallel":
            raise ValueError(
                f"Latent site '{name}' is discrete ({type(site['fn']).__name__}). "
                "CDSInference samples continuous latent variables only. Marginalise it "
                "out: mark it with infer={'enumerate': 'parallel'} (needs funsor) or "
                "write the marginal likelihood yourself (logsumexp over its values in "
                "numpyro.factor), or relax it to a continuous variable."
            )


def _check_subsampling(trace: dict[str, dict]) -> None:
    for name, site in trace.items():
        if site["type"] == "plate" and site["args"][1] is not None:
            size, subsample_size = site["args"]
            if subsample_size != size:
                raise ValueError(
                    f"Plate '{name}' subsamples its data (subsample_size="
                    f"{subsample_size} of {size}). CDSInference trains on the exact "
                    "posterior, which needs every data point at every step: remove "
                    "subsample_size (or use numpyro.infer.SVI or HMCECS for data "
                    "subsampling)."
                )


def _check_site_shapes(trace: dict[str, dict]) -> None:
    """Every sample site's log density can be evaluated at its traced value."""
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        if isinstance(site["value"], (list, tuple)):
            raise TypeError(
                f"Site '{name}': its observed value is a Python "
                f"{type(site['value']).__name__}; pass data as arrays (e.g. "
                "jnp.asarray(y)) to run()."
            )
        try:
            site["fn"].log_prob(site["value"])
        except (ValueError, TypeError) as error:
            fn = site["fn"]
            raise ValueError(
                f"Site '{name}': its value of shape {jnp.shape(site['value'])} does "
                f"not fit its {type(fn).__name__} distribution (batch shape "
                f"{fn.batch_shape}, event shape {fn.event_shape}): "
                f"{str(error).rstrip('.')}. Check the shapes of the arguments passed "
                "to run() (data and covariates of matching lengths)."
            ) from None


def _non_finite_sites(trace: dict[str, dict]) -> list[str]:
    """Names of sample sites whose log density is not finite in ``trace``."""
    bad = []
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        log_prob = site["fn"].log_prob(site["value"])
        if not bool(jnp.all(jnp.isfinite(log_prob))):
            bad.append(name)
    return bad


def target_from_model(
    rng_key: jax.Array,
    model: Callable,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    *,
    num_inits: int = 8,
) -> Target:
    """Turn a NumPyro model and its arguments into a :class:`Target`.

    Args:
        rng_key: key for the initial points.
        model: a NumPyro model (Python callable with NumPyro primitives).
        model_args: positional arguments of the model.
        model_kwargs: keyword arguments of the model.
        num_inits: number of valid initial points to draw.

    Returns:
        The target.

    Raises:
        TypeError: ``model`` is not callable, or running it with the arguments fails.
        ValueError: the model has no latent sites, a discrete latent site that is not
            enumerated, or no finite log density at initialisation.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("scale", dist.HalfNormal(1.0))
        >>> target = target_from_model(jax.random.key(0), model)
        >>> target.dim, sorted(target.postprocess_fn(target.init_positions[0]))
        (1, ['scale'])
    """
    if not callable(model):
        raise TypeError(f"model must be a callable NumPyro model, got {type(model)}.")
    if not isinstance(model_args, tuple):
        raise TypeError(f"model_args must be a tuple, got {type(model_args).__name__}.")
    model_kwargs = {} if model_kwargs is None else model_kwargs
    if not isinstance(model_kwargs, dict):
        raise TypeError("model_kwargs must be a dict.")
    trace_key, init_key = jax.random.split(rng_key)
    trace = _trace_at_init(model, model_args, model_kwargs, trace_key)
    sites = _latent_sites(trace)
    if not sites:
        raise ValueError(
            "The model has no latent sample sites: every numpyro.sample site is "
            "observed"
            " (or there are none), so there is no posterior to sample. Add a latent "
            "site, or remove obs= from the site you want to infer."
        )
    _check_discrete_sites(sites)
    _check_subsampling(trace)
    _check_site_shapes(trace)
    try:
        info = initialize_model(
            jax.random.split(init_key, num_inits),
            model,
            init_strategy=init_to_uniform,
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
    except RuntimeError as error:
        bad = _non_finite_sites(trace)
        where = f" at site(s) {bad}" if bad else ""
        raise ValueError(
            f"The model's log density is not finite{where} at any initial point NumPyro"
            " tried. Check that the observed data lie in the support of their "
            "distributions and that numpyro.factor terms are finite (no NaN or inf)."
        ) from error
    except ImportError as error:
        raise ValueError(
            f"The model needs enumeration of discrete sites: {error}"
        ) from error
    positions = info.param_info.z
    _, unravel_fn = ravel_pytree(jax.tree.map(lambda a: a[0], positions))
    init_positions = jax.vmap(lambda z: ravel_pytree(z)[0])(positions)
    potential_fn = info.potential_fn
    postprocess = info.postprocess_fn

    def logdensity_fn(x):
        return -potential_fn(unravel_fn(x))

    def postprocess_fn(x) -> dict[str, Any]:
        return postprocess(unravel_fn(x))

    return Target(
        logdensity_fn=logdensity_fn,
        dim=int(init_positions.shape[-1]),
        unravel_fn=unravel_fn,
        postprocess_fn=postprocess_fn,
        init_positions=init_positions,
    )
