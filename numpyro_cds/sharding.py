"""Data parallelism: the batch of paths, and of draws, split over devices.

Training and drawing run inside :func:`batch_mesh` (a one-axis
:class:`jax.sharding.Mesh` named ``"batch"``, set with :func:`jax.set_mesh`).
:func:`shard_batch` marks the prior draws that start every path as split along that
axis; XLA propagates the split through the path simulation, the loss and its gradient,
whose sum over the batch becomes an all-reduce.  :func:`replicate` puts the parameters
and optimiser state on every device.  Nothing else changes: the random numbers of a
sharded array are those of the unsharded one (JAX's partitionable Threefry), so one
device and several train the same sampler up to the order of floating-point sums.

Several processes (hosts) use JAX's own runtime: each calls
:func:`jax.distributed.initialize` before anything else, ``jax.devices()`` then lists
every process's devices, and every process runs the same program.  Draws are gathered
onto every process (:func:`gathered`), so each holds all of them.

With one device no value changes (:func:`replicate` still places arrays on the
one-device mesh, as the training's compiled chunks return them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["BATCH_AXIS", "batch_mesh", "gathered", "replicate", "shard_batch"]

#: The name of the mesh axis that splits the batch.
BATCH_AXIS = "batch"


def _check_devices(devices) -> list:
    devices = list(jax.devices() if devices is None else devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError(
            "devices must be None (every device JAX sees) or a non-empty sequence of "
            f"jax.Device, e.g. jax.devices()[:2]; got {devices!r}."
        )
    return devices


@contextlib.contextmanager
def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Iterator[Mesh]:
    """Split batches over ``devices`` (None: every device) inside this context.

    Example:
        >>> import jax
        >>> with batch_mesh() as mesh:
        ...     print(mesh.axis_names)
        ('batch',)
    """
    devices = _check_devices(devices)
    mesh = Mesh(
        np.array(devices), (BATCH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )
    with jax.set_mesh(mesh):
        yield mesh


def _batch_devices() -> int:
    """Devices along the batch axis of the mesh being traced under (1 without)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or BATCH_AXIS not in mesh.axis_names:
        return 1
    return mesh.shape[BATCH_AXIS]


def shard_batch(x: jax.Array) -> jax.Array:
    """``x`` marked as split along its leading (batch) axis (in a traced function)."""
    if _batch_devices() == 1:
        return x
    spec = PartitionSpec(BATCH_AXIS, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)


def gathered(tree):
    """``tree`` with every array whole on every device, if several processes share it.

    Inside a traced function; with one process arrays stay split (NumPy reads a split
    array whole), with several each process gets all of them.
    """
    if _batch_devices() == 1 or jax.process_count() == 1:
        return tree
    return jax.tree.map(
        lambda a: jax.lax.with_sharding_constraint(a, PartitionSpec()), tree
    )


def replicate(tree):
    """The arrays of ``tree`` copied to every device of the current mesh (if any).

    Also with a one-device mesh: a jitted function's outputs carry the mesh in their
    type, so inputs placed the same way are not traced and compiled a second time.
    """
    mesh = jax.sharding.get_mesh()
    if mesh.empty:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(
        lambda a: jax.device_put(a, sharding) if isinstance(a, jax.Array) else a, tree
    )
