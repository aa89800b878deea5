"""The trained sampler as a value: save, load in a new process, refusals, traces."""

import dataclasses
import os
import pickle
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y, ROOT, eight_schools

import numpyro_cds.correction
import numpyro_cds.trained
from numpyro_cds import CDSInference, ConsistencyConfig
from numpyro_cds.checkpoint import write_checkpoint

#: Tiny training settings (API tests, not quality).
TINY = dict(
    num_train_steps=4,
    batch_size=8,
    num_sde_steps=2,
    chunk_size=4,
    progress_bar=False,
    correction=None,
)

_LOAD_AND_DRAW = """
import sys
import jax, numpy as np
sys.path.insert(0, {examples!r})
from eight_schools import SIGMA, Y, model
from numpyro_cds import CDSInference
cds = CDSInference.load({path!r}, model, num_samples=50, num_chains=2)
cds.run(jax.random.key(0), SIGMA, y=Y)
samples, log_weights = cds.sample(jax.random.key(3), 7, 2, log_weights=True)
np.savez({out!r}, mu=cds.get_samples()["mu"], extra=samples["tau"], lw=log_weights)
"""


@pytest.fixture(scope="module")
def saved(trained_eight_schools, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("saved") / "eight_schools.cds")
    trained_eight_schools.save(path)
    return path


def test_load_in_a_new_process_draws_the_same_bits(trained_eight_schools, saved):
    out = os.path.join(os.path.dirname(saved), "drawn.npz")
    script = _LOAD_AND_DRAW.format(
        examples=os.path.join(ROOT, "examples"), path=saved, out=out
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    drawn = np.load(out)
    cds = trained_eight_schools
    samples, log_weights = cds.sample(jax.random.key(3), 7, 2, log_weights=True)
    # The fixture's draws come from run(key(0)) with correction="mcmc".
    np.testing.assert_array_equal(drawn["mu"], cds.get_samples()["mu"])
    np.testing.assert_array_equal(drawn["extra"], samples["tau"])
    np.testing.assert_array_equal(drawn["lw"], log_weights)


def test_a_loaded_sampler_refuses_other_data_and_other_models(saved):
    loaded = CDSInference.load(saved, eight_schools, num_samples=5)
    with pytest.raises(ValueError, match="not loaded.*model_arguments_sha256"):
        loaded.run(jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y + 1.0)

    def other(sigma, y=None):  # ten unconstrained dimensions too, other sites
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([10]))
        numpyro.sample("y", dist.Normal(x[:8], sigma), obs=y)

    with pytest.raises(ValueError, match="not loaded.*sites"):
        CDSInference.load(saved, other).run(
            jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y
        )


def test_load_takes_drawing_settings_only(saved):
    with pytest.raises(TypeError, match=r"batch_size.. are training settings"):
        CDSInference.load(saved, eight_schools, batch_size=32)


def test_load_refuses_what_is_not_a_saved_sampler(tmp_path):
    checkpoint = str(tmp_path / "training.ckpt")
    write_checkpoint(checkpoint, {"dim": 10}, {})
    with pytest.raises(ValueError, match="not a saved sampler"):
        CDSInference.load(checkpoint, eight_schools)
    evil = tmp_path / "evil.cds"
    evil.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="not a numpyro_cds checkpoint"):
        CDSInference.load(evil, eight_schools)
    truncated = tmp_path / "truncated.cds"
    with open(checkpoint, "rb") as f:
        truncated.write_bytes(f.read()[:30])
    with pytest.raises(ValueError, match="damaged"):
        CDSInference.load(truncated, eight_schools)


def test_repeated_draws_of_one_shape_compile_once(trained_eight_schools):
    cds = trained_eight_schools
    cds.sample(jax.random.key(1), 11, 2)
    before = eqx.debug.get_num_traces(numpyro_cds.trained._traced_draw)
    for seed in range(3):
        cds.sample(jax.random.key(seed), 11, 2)
    assert eqx.debug.get_num_traces(numpyro_cds.trained._traced_draw) == before


def test_a_second_run_compiles_nothing_again(trained_eight_schools):
    """Same arguments and key: no retraining, the same draws, no new traces."""
    cds = trained_eight_schools
    counters = (
        numpyro_cds.trained._traced_draw,
        numpyro_cds.correction._traced_mala_correction,
    )
    # The first run compiles what JAX's caches lack (they are cleared between tests).
    cds.run(jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    before = [eqx.debug.get_num_traces(counter) for counter in counters]
    samples = cds.get_samples()
    cds.run(jax.random.key(0), EIGHT_SCHOOLS_SIGMA, y=EIGHT_SCHOOLS_Y)
    assert [eqx.debug.get_num_traces(counter) for counter in counters] == before
    np.testing.assert_array_equal(cds.get_samples()["mu"], samples["mu"])


def test_data_changed_in_place_is_new_data():
    def model(y):
        loc = numpyro.sample("loc", dist.Normal(0.0, 10.0))
        numpyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    y = np.zeros(3)
    cds = CDSInference(model, num_samples=5, whitening=None, **TINY)
    cds.run(jax.random.key(0), y)
    target = cds.target
    y += 100.0
    cds.run(jax.random.key(0), y)
    # A new target for the new data; the old one kept the data of its run.
    at_100 = np.array([100.0])
    assert cds.target is not target
    assert float(cds.target.logdensity_fn(at_100)) > -60.0
    assert float(target.logdensity_fn(at_100)) < -10_000.0


def test_changed_settings_train_again_and_keep_best_does_not():
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    cds = CDSInference(model, num_samples=5, whitening=None, **TINY)
    cds.run(jax.random.key(0))
    target = cds.target
    cds.monitor_config = dataclasses.replace(cds.monitor_config, keep_best=False)
    cds.run(jax.random.key(0))
    assert cds.target is target  # drawing with another snapshot retrains nothing
    cds.train_config = dataclasses.replace(cds.train_config, learning_rate=1e-3)
    cds.run(jax.random.key(0))
    assert cds.target is not target


def test_a_state_scale_network_trains_and_loads_with_its_scale_layer(tmp_path):
    """``state_scale`` is a saved setting: the loaded sampler draws the same bits."""

    def model():
        numpyro.sample("x", dist.Normal(jax.numpy.array([0.0, 3.0]), 2.0))

    consistency = ConsistencyConfig(state_scale=True, batch_size=8, num_sde_steps=2)
    cds = CDSInference(
        model,
        num_samples=7,
        consistency=consistency,
        whitening=None,
        **dict(TINY, learning_rate=3e-2),
    )
    cds.run(jax.random.key(0))
    for trained in (cds.trained, cds.trained_teacher):
        # Trained away from its zero start, in the student and its DDS teacher.
        assert np.any(np.asarray(trained.network.scale_layer.bias) != 0.0)
    path = str(tmp_path / "scaled.cds")
    cds.save(path)
    loaded = CDSInference.load(path, model, num_samples=7, correction=None)
    loaded.run(jax.random.key(0))
    assert loaded.trained.network.scale_layer is not None
    np.testing.assert_array_equal(loaded.get_samples()["x"], cds.get_samples()["x"])
