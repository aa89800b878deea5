"""What users pass to ``CDSInference``: keys, counts, config overrides, model data.

Each function checks one kind of input and fails with an error that names the input
and the fix, before any JAX code sees it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_key",
    "check_count",
    "check_num_steps",
    "frozen_arguments",
    "with_overrides",
]


def as_key(rng_key) -> jax.Array:
    """Accept new-style keys and legacy ``uint32[2]`` keys; return a new-style key.

    Example:
        >>> import jax
        >>> as_key(jax.random.PRNGKey(0)).shape
        ()
    """
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


def check_count(name: str, value: Any) -> int:
    """``value`` as a positive ``int``, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}.")
    return int(value)


def check_num_steps(num_steps: Any, num_sde_steps: int) -> int:
    """``num_steps`` as a power of two up to ``num_sde_steps``; else a clear error."""
    num_steps = check_count("num_steps", num_steps)
    if num_steps & (num_steps - 1) or num_steps > num_sde_steps:
        raise ValueError(
            "num_steps must be a power of two no larger than num_sde_steps="
            f"{num_sde_steps} (1, 2, 4, ..., {num_sde_steps}); got {num_steps}."
        )
    return num_steps


def with_overrides(config, **overrides):
    """``config`` (a dataclass) with the fields given (not None) replaced.

    Example:
        >>> from numpyro_cds.train import TrainConfig
        >>> with_overrides(TrainConfig(), learning_rate=None, chunk_size=10).chunk_size
        10
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(config, **given)


def frozen_arguments(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The model arguments with NumPy arrays copied into (immutable) JAX arrays.

    The sampler is trained for the data as they are at ``run``: changing an array in
    place afterwards is new data (the next ``run`` sees another fingerprint and
    trains again), never a silent change of what a trained sampler targets.
    """

    def freeze(leaf):
        numeric = isinstance(leaf, np.ndarray) and leaf.dtype.kind in "biufc"
        return jnp.array(leaf) if numeric else leaf

    return jax.tree.map(freeze, (args, kwargs))
