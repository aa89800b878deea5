"""Test configuration: CPU only, fixed seeds, one tiny trained sampler per session."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from numpyro_cds import CDSInference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The examples (their models) and the benchmarks package are imported by tests.
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, ROOT)
from eight_schools import SIGMA as EIGHT_SCHOOLS_SIGMA  # noqa: E402
from eight_schools import Y as EIGHT_SCHOOLS_Y  # noqa: E402
from eight_schools import model as eight_schools  # noqa: E402


@pytest.fixture(scope="session")
def trained_eight_schools():
    """A tiny CDSInference run on eight schools (API tests, not quality).

    Shared by every module that reads it (one training per test session); tests may
    draw more from it or run it again with the same arguments and key, which gives
    the same draws, but must not change its settings.
    """
    cds = CDSInference(
        eight_schools,
        num_samples=50,
        num_chains=2,
        num_train_steps=20,
        batch_size=16,
        num_sde_steps=4,
        chunk_size=10,
        progress_bar=False,
    )
    cds.run(jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    return cds


def perturbed_network(dim, scale, key, gate_bias=1.0, score_form="langevin"):
    """A width-16 control network with every weight (output layer and gate included)
    perturbed from its start by ``scale`` times standard normals: an arbitrary,
    non-optimal control."""
    import equinox as eqx

    from numpyro_cds.networks import ControlNetwork

    network = ControlNetwork(
        dim, width=16, gate_bias=gate_bias, score_form=score_form, key=key
    )
    params, static = eqx.partition(network, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [
        leaf + scale * jax.random.normal(k, leaf.shape)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)
