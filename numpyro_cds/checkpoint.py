"""Training checkpoints: a JSON header and Equinox-serialised arrays, never pickle.

A checkpoint file holds, in order: the magic bytes :data:`MAGIC`, the length of the
header (8 bytes, little-endian), the header as UTF-8 JSON, and the arrays of one
pytree written by :func:`equinox.tree_serialise_leaves` (``.npy`` records).  Reading it
parses JSON and loads ``.npy`` records into a template of the expected structure,
shapes and dtypes (:func:`equinox.tree_deserialise_leaves`, which calls ``np.load``
without ``allow_pickle``), so loading a file never runs code from it.

The header records what the checkpoint was written for (``expected`` of
:func:`read_checkpoint`: the dimension, every setting that changes the result, a
fingerprint of the model arguments and the key); a checkpoint is only read back when
all of them match, and the error names each one that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import equinox as eqx
import jax
import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "arguments_fingerprint",
    "read_checkpoint",
    "read_header",
    "write_checkpoint",
]

#: First bytes of every checkpoint file.
MAGIC = b"NUMPYRO_CDS_CHECKPOINT\n"
#: Version of the layout; files of another version are refused.
FORMAT_VERSION = 1
# A header is a few kilobytes plus the loss history (a few numbers per iteration).
_MAX_HEADER_BYTES = 1 << 30


def arguments_fingerprint(args: tuple, kwargs: dict) -> str:
    """SHA-256 of the model arguments: the tree structure, and each leaf's values.

    Array-like leaves contribute their dtype, shape and bytes; other leaves (strings,
    Python objects) their type and ``repr``.

    Example:
        >>> import numpy as np
        >>> a = arguments_fingerprint((np.arange(3.0),), {"y": None})
        >>> a == arguments_fingerprint((np.arange(3.0),), {"y": None})
        True
        >>> a == arguments_fingerprint((np.arange(3.0) + 1,), {"y": None})
        False
    """
    leaves, tree = jax.tree.flatten((args, kwargs))
    digest = hashlib.sha256(str(tree).encode())
    for leaf in leaves:
        try:
            array = np.asarray(leaf)
        except (TypeError, ValueError):
            array = None
        if array is not None and array.dtype != object:
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        else:
            digest.update(f"{type(leaf).__qualname__}:{leaf!r}".encode())
    return digest.hexdigest()


def write_checkpoint(path: str, header: dict, arrays: Any) -> None:
    """Write ``header`` (JSON-serialisable) and the pytree ``arrays``, atomically.

    The file is written beside ``path`` and renamed over it, so an interrupted write
    never leaves a half-written checkpoint.
    """
    header_bytes = json.dumps(
        {"format_version": FORMAT_VERSION, **header}, sort_keys=True
    ).encode()
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(MAGIC)
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        eqx.tree_serialise_leaves(f, jax.device_get(arrays))
    os.replace(temporary, path)


def _read_header(f, path: str) -> dict:
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError(
            f"{path!r} is not a numpyro_cds checkpoint (it may be a pickle written by "
            "numpyro_cds 0.1 or another file; it was not loaded). Delete it or pass "
            "another checkpoint path."
        )
    size = int.from_bytes(f.read(8), "little")
    if not 0 < size <= _MAX_HEADER_BYTES:
        raise ValueError(f"Checkpoint {path!r} is damaged (header size {size}).")
    try:
        header = json.loads(f.read(size).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Checkpoint {path!r} is damaged: {error}.") from None
    if not isinstance(header, dict):
        raise ValueError(f"Checkpoint {path!r} is damaged (header not an object).")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint {path!r} has format version "
            f"{header.get('format_version')!r}; this numpyro_cds reads version "
            f"{FORMAT_VERSION}. Delete it or pass another checkpoint path."
        )
    return header


def _open(path: str):
    try:
        return open(path, "rb")
    except OSError as error:
        raise ValueError(
            f"{path!r} cannot be read as a numpyro_cds file ({error.strerror}); pass "
            "the path of a file written by numpyro_cds."
        ) from None


def read_header(path: str) -> dict:
    """The header of the checkpoint at ``path`` (no arrays are loaded)."""
    with _open(path) as f:
        return _read_header(f, path)


def _differences(expected: dict, found: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``expected`` whose values ``found`` differs in."""
    differences = []
    for name, value in expected.items():
        other = found.get(name, "<missing>") if isinstance(found, dict) else None
        if isinstance(value, dict) and isinstance(other, dict):
            differences += _differences(value, other, f"{prefix}{name}.")
        elif other != value:
            differences.append(f"{prefix}{name} (file: {other!r}, now: {value!r})")
    return differences


def read_checkpoint(
    path: str, expected: dict, like: Any, action: str = "resumed"
) -> tuple[dict, Any]:
    """Read a checkpoint written for ``expected`` into the template ``like``.

    Args:
        path: the file.
        expected: header fields that must equal the file's (nested dicts compare
            field by field), e.g. the dimension, the settings, the arguments'
            fingerprint and the key.  The values must be what ``json`` gives back
            (lists, not tuples).
        like: a pytree with the structure, shapes and dtypes of the stored arrays.
        action: what is refused when ``expected`` differs, for the error message.

    Returns:
        ``(header, arrays)``.

    Raises:
        ValueError: not a checkpoint, another format version, a damaged file, a
            field of ``expected`` that differs (each one is named), or arrays that do
            not fit ``like``.
    """
    with _open(path) as f:
        header = _read_header(f, path)
        differences = _differences(expected, header)
        if differences:
            raise ValueError(
                f"{path!r} was written for another model, data or settings, so it "
                f"is not {action}; what differs: " + "; ".join(differences) + ". "
                "Delete the file or pass another path."
            )
        try:
            arrays = eqx.tree_deserialise_leaves(f, like)
        except (RuntimeError, ValueError, EOFError, OSError) as error:
            raise ValueError(
                f"Checkpoint {path!r} does not match this sampler's arrays (network "
                f"size, optimiser) or is damaged: {error}. Delete the file or pass "
                "another checkpoint path."
            ) from None
    return header, arrays
