"""Checkpoint files: JSON header + .npy arrays, identity checks, damaged files."""

import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_cds.checkpoint import (
    MAGIC,
    arguments_fingerprint,
    read_checkpoint,
    read_header,
    write_checkpoint,
)


def _arrays():
    return {"a": jnp.arange(3.0), "b": (jnp.ones((2, 2), jnp.int32), jnp.zeros(()))}


def test_round_trip_restores_arrays_and_header(tmp_path):
    path = str(tmp_path / "c.ckpt")
    header = {"dim": 3, "settings": {"width": 64, "milestones": [1, 2]}, "x": np.inf}
    write_checkpoint(path, header, _arrays())
    assert read_header(path)["x"] == np.inf
    like = {"a": jnp.zeros(3), "b": (jnp.zeros((2, 2), jnp.int32), jnp.ones(()))}
    found, arrays = read_checkpoint(
        path, {"dim": 3, "settings": header["settings"]}, like
    )
    assert found["format_version"] == 1
    np.testing.assert_array_equal(arrays["a"], np.arange(3.0))
    np.testing.assert_array_equal(arrays["b"][0], np.ones((2, 2)))
    assert arrays["b"][0].dtype == jnp.int32


def test_every_differing_field_is_named(tmp_path):
    path = str(tmp_path / "c.ckpt")
    write_checkpoint(path, {"dim": 3, "settings": {"width": 64, "lr": 0.1}}, _arrays())
    expected = {"dim": 4, "settings": {"width": 64, "lr": 0.2}}
    with pytest.raises(ValueError) as error:
        read_checkpoint(path, expected, _arrays())
    message = str(error.value)
    assert "dim (file: 3, now: 4)" in message
    assert "settings.lr (file: 0.1, now: 0.2)" in message
    assert "width" not in message


def test_arrays_of_other_shapes_are_refused(tmp_path):
    path = str(tmp_path / "c.ckpt")
    write_checkpoint(path, {}, _arrays())
    like = {"a": jnp.zeros(4), "b": (jnp.zeros((2, 2), jnp.int32), jnp.ones(()))}
    with pytest.raises(ValueError, match="does not match this sampler's arrays"):
        read_checkpoint(path, {}, like)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x80\x04K\x01.", "not a numpyro_cds checkpoint"),
        (MAGIC + (5).to_bytes(8, "little") + b"{bad}", "damaged"),
        (MAGIC + (0).to_bytes(8, "little"), "damaged"),
        (MAGIC + (13).to_bytes(8, "little") + b'{"format_ver', "damaged"),
    ],
    ids=["pickle", "bad json", "empty header", "truncated"],
)
def test_other_and_damaged_files_are_refused(tmp_path, content, match):
    path = tmp_path / "c.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_header(str(path))


def test_another_format_version_is_refused(tmp_path):
    path = tmp_path / "c.ckpt"
    header = b'{"format_version": 99}'
    path.write_bytes(MAGIC + len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match="format version 99"):
        read_header(str(path))


def test_fingerprint_sees_values_dtypes_and_structure():
    base = arguments_fingerprint((np.ones(3),), {"y": np.zeros(2)})
    assert base == arguments_fingerprint((np.ones(3),), {"y": np.zeros(2)})
    assert base != arguments_fingerprint((np.ones(3),), {"y": np.ones(2)})
    assert base != arguments_fingerprint((np.ones(3, np.float32),), {"y": np.zeros(2)})
    assert base != arguments_fingerprint((np.ones(3),), {"z": np.zeros(2)})
    assert base != arguments_fingerprint((np.ones(3), "label"), {"y": np.zeros(2)})


def test_the_package_never_unpickles():
    """No module of numpyro_cds imports a pickle library or allows pickled arrays."""
    import pathlib
    import re

    import numpyro_cds

    package = pathlib.Path(numpyro_cds.__file__).parent
    forbidden = re.compile(
        r"^\s*(import|from)\s+(pickle|cloudpickle|dill)\b|allow_pickle\s*=\s*True"
    )
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(package.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert len(list(package.glob("*.py"))) > 10
    assert offenders == []


def test_a_directory_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="cannot be read as a numpyro_cds file"):
        read_header(str(tmp_path))
