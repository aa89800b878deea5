"""Data-parallel training: one device and several train the same sampler."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from numpyro_cds.sharding import batch_mesh, shard_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a process of its own: the number of host devices is fixed at JAX's start.
FOUR_DEVICES = """
import json, jax, jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist
import equinox as eqx
from numpyro_cds import CDSInference
from numpyro_cds.sharding import batch_mesh, shard_batch

def model():
    numpyro.sample("x", dist.Normal(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.5])))

def trained(devices):
    cds = CDSInference(model, num_samples=64, num_train_steps=6, batch_size=16,
                       num_sde_steps=4, chunk_size=3, progress_bar=False,
                       correction=None, devices=devices)
    cds.run(jax.random.key(0))
    leaves = jax.tree.leaves(eqx.filter(cds.trained, eqx.is_inexact_array))
    params = np.concatenate([np.ravel(np.asarray(a)) for a in leaves])
    return params, np.asarray(cds.get_samples()["x"])

with batch_mesh() as mesh:
    split = jax.jit(lambda k: shard_batch(jax.random.normal(k, (16, 2))))
    devices_used = len(split(jax.random.key(0)).sharding.device_set)
one, one_draws = trained(jax.devices()[:1])
four, four_draws = trained(None)
print(json.dumps({
    "devices": len(jax.devices()), "devices_used": devices_used,
    "params": [one.tolist(), four.tolist()],
    "draws": [one_draws.tolist(), four_draws.tolist()],
}))
"""


def test_four_host_devices_train_the_parameters_of_one():
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
    )
    result = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["devices_used"] == 4
    one, four = (np.asarray(p) for p in out["params"])
    # The default CDDS: a DDS teacher, then the student; sums differ in order only.
    np.testing.assert_allclose(four, one, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(*out["draws"], rtol=1e-4, atol=1e-4)


def test_two_processes_train_one_sampler(tmp_path):
    flags = ["--method", "scds", "--num-samples", "64", "--num-train-steps", "4"]
    flags += ["--batch-size", "16", "--num-sde-steps", "4", "--correction", "none"]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "distributed.py")]
        + ["--launch", "2", "--no-progress-bar", *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "parameters, sum" in line]
    assert sorted(line.split(":")[0] for line in lines) == [
        "process 0 of 2",
        "process 1 of 2",
    ]
    assert len({line.split(":", 1)[1] for line in lines}) == 1, lines


def test_one_device_leaves_arrays_alone():
    x = jax.numpy.ones((4, 2))
    with batch_mesh(jax.devices()[:1]):
        assert jax.jit(shard_batch)(x).sharding.is_fully_replicated


@pytest.mark.parametrize("devices", [[], ["cpu:0"]])
def test_devices_that_are_not_devices_are_refused(devices):
    with pytest.raises(ValueError, match="devices must be None"):
        with batch_mesh(devices):
            pass
