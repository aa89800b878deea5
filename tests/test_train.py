"""The chunked training loop: deterministic resume, loss decrease, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_cds.consistency import ConsistencyConfig, consistency_sampler
from numpyro_cds.train import TrainConfig, default_optimizer, fit


def _setup(num_train_steps):
    logdensity = lambda x: -0.5 * jnp.sum(((x - 2.0) / 0.5) ** 2)  # noqa: E731
    config = ConsistencyConfig(num_sde_steps=8, batch_size=32, width=16)
    optimizer = default_optimizer(TrainConfig(num_train_steps=num_train_steps))
    algo = consistency_sampler(logdensity, 1, config, optimizer)
    state, static = algo.init(jax.random.key(0))
    return algo, state, static


def test_resumed_training_equals_uninterrupted():
    algo, state, static = _setup(30)
    key = jax.random.key(7)
    full, info = fit(
        key, algo.step, state, static, 30, chunk_size=10, progress_bar=False
    )
    assert info.diffusion_loss.shape == (30,)
    part, _ = fit(key, algo.step, state, static, 10, chunk_size=10, progress_bar=False)
    assert int(part.iteration) == 10
    resumed, rest = fit(
        key, algo.step, part, static, 30, chunk_size=10, progress_bar=False
    )
    assert rest.diffusion_loss.shape == (20,)
    for a, b in zip(
        jax.tree.leaves(full.ema_params), jax.tree.leaves(resumed.ema_params)
    ):
        np.testing.assert_array_equal(a, b)


def test_chunk_larger_than_remaining_steps_stops_exactly():
    algo, state, static = _setup(7)
    final, info = fit(
        jax.random.key(0), algo.step, state, static, 7, chunk_size=5, progress_bar=False
    )
    assert int(final.iteration) == 7
    assert info.diffusion_loss.shape == (7,)
    assert np.all(np.isfinite(info.diffusion_loss))


def test_loss_decreases():
    algo, state, static = _setup(200)
    _, info = fit(
        jax.random.key(1),
        algo.step,
        state,
        static,
        200,
        chunk_size=50,
        progress_bar=False,
    )
    first, last = info.diffusion_loss[:20].mean(), info.diffusion_loss[-20:].mean()
    assert last < 0.5 * first


def test_progress_bar_shows_loss(capsys):
    algo, state, static = _setup(4)
    fit(jax.random.key(1), algo.step, state, static, 4, chunk_size=2, progress_bar=True)
    assert "loss=" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_train_steps": 0}, "num_train_steps"),
        ({"num_train_steps": 10.5}, "num_train_steps"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"final_learning_rate_fraction": 0.0}, "final_learning_rate_fraction"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
