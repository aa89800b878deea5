"""Test configuration: CPU only, fixed seeds, one tiny trained sampler per module."""

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


@pytest.fixture(scope="module")
def trained_eight_schools():
    """A tiny CDSInference run on eight schools (API tests, not quality)."""
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
