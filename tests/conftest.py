"""Test configuration: CPU only, fixed seeds, one tiny trained sampler per session.

Compiled programs are shared through a JAX compilation cache in a new temporary
folder per test session (the xdist workers share it; it is removed at the end): most
tests train tiny samplers whose programs are identical from test to test, and
compiling them again dominated the suite's time.  The cache is keyed on the program
and JAX's version and flags, and starts empty, as on a fresh machine.

JAX's in-memory caches are cleared after every test: they keep each compiled program
of every run alive (each fit compiles new closures), and every program holds memory
mappings (about 1600 for a tiny fit), so a test worker reached Linux's limit of
65530 mappings per process (``vm.max_map_count``) and aborted inside XLA's compiler.
"""

import os
import shutil
import sys
import tempfile

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

_CACHE_VARIABLES = {
    "JAX_COMPILATION_CACHE_DIR": None,  # set by the controller
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
}


def pytest_configure(config):
    """Use (the controller: create) this session's compilation cache folder.

    Set in the environment, so that the workers and the subprocesses of the example
    and benchmark tests read it too.
    """
    if not hasattr(config, "workerinput") and not os.environ.get(
        "JAX_COMPILATION_CACHE_DIR"
    ):
        _CACHE_VARIABLES["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
            prefix="numpyro-cds-jax-"
        )
        os.environ.update(_CACHE_VARIABLES)
        config._numpyro_cds_cache = _CACHE_VARIABLES["JAX_COMPILATION_CACHE_DIR"]
    jax.config.update(
        "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR")
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
    """Remove the compilation cache folder this session created."""
    folder = getattr(config, "_numpyro_cds_cache", None)
    if folder is not None:
        for name in _CACHE_VARIABLES:
            os.environ.pop(name, None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clear_jax_caches():
    """Free the compiled programs of each test once it has run (see above)."""
    yield
    jax.clear_caches()


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
