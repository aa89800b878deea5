"""Training monitor: the best snapshot by a held-out score; a diverging run stops."""

import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_cds import CDSInference, TrainingDivergedWarning
from numpyro_cds.monitor import MonitorConfig, TrainingMonitor, renyi_half_divergence


def _losses(value, n=50):
    return {"diffusion_loss": np.full(n, value), "kept_fraction": np.ones(n)}


def _spread(p):
    """Log weights of two draws ``(0, p)``: the divergence grows with ``|p|``."""
    return np.array([0.0, p])


def test_keeps_the_snapshot_with_the_smallest_held_out_divergence():
    monitor = TrainingMonitor(_spread, MonitorConfig())
    for iteration, spread in [(0, 2.0), (50, 0.5), (100, 1.0)]:
        monitor.observe(iteration, spread, None if iteration == 0 else _losses(1.0))
    assert monitor.best.iteration == 50 and monitor.chosen().params == 0.5
    assert monitor.chosen(keep_best=False).iteration == 100
    last = TrainingMonitor(_spread, MonitorConfig(keep_best=False))
    for iteration, spread in [(0, 2.0), (50, 0.5), (100, 1.0)]:
        last.observe(iteration, spread, None)
    assert last.chosen().iteration == 100


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_nan_or_infinite_weight_makes_a_snapshot_the_worst(bad):
    monitor = TrainingMonitor(_spread, MonitorConfig())
    monitor.observe(0, 5.0, None)
    monitor.observe(50, bad, _losses(1.0))
    assert monitor.best.iteration == 0


def test_a_draw_outside_the_support_costs_its_share_of_the_draws():
    """One zero weight in ``n`` equal ones: ``BC = sqrt(1 - 1 / n)``."""
    for n in (2, 10, 1000):
        log_weights = np.zeros(n)
        log_weights[0] = -np.inf
        exact = -np.log1p(-1.0 / n)
        assert renyi_half_divergence(log_weights) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("scale", [0.7, 1.3])
def test_renyi_half_divergence_of_gaussians_of_different_widths(scale):
    """q = N(0, s^2), p = N(0, 1): D = log((1 + s^2) / (2 s)), either way of s."""
    x = scale * np.random.default_rng(0).standard_normal(400_000)
    log_weights = -0.5 * x**2 + 0.5 * (x / scale) ** 2 + np.log(scale)
    exact = np.log((1.0 + scale**2) / (2.0 * scale))
    assert renyi_half_divergence(log_weights) == pytest.approx(exact, rel=0.05)


def test_renyi_half_divergence_of_shifted_gaussians():
    """q = N(0, 1), p = N(mu, 1): D = mu^2 / 4, whatever the normalisation of p."""
    mu = 1.5
    x = np.random.default_rng(1).standard_normal(400_000)
    log_weights = -0.5 * (x - mu) ** 2 + 0.5 * x**2 + 3.0
    assert renyi_half_divergence(log_weights) == pytest.approx(mu**2 / 4, rel=0.05)


@pytest.mark.parametrize(
    "bad, match",
    [
        (_losses(1e4), "times its lowest"),
        (_losses(np.nan), "not finite"),
        ({"diffusion_loss": np.ones(50), "kept_fraction": np.full(50, 0.2)}, "kept"),
    ],
)
def test_divergence_needs_patience_then_stops(bad, match):
    monitor = TrainingMonitor(lambda p: np.zeros(2), MonitorConfig(patience=2))
    monitor.observe(50, 0, _losses(1.0))
    monitor.observe(100, 0, bad)
    assert not monitor.stop
    monitor.observe(150, 0, _losses(1.0))  # a good chunk resets the count
    monitor.observe(200, 0, bad)
    assert not monitor.stop
    monitor.observe(250, 0, bad)
    assert monitor.stop and match in monitor.diagnosis
    assert "iteration 250" in monitor.diagnosis


def _normal_model():
    numpyro.sample("x", dist.Normal(1.0, 2.0).expand([2]).to_event(1))


SMALL = dict(num_train_steps=40, batch_size=16, num_sde_steps=4, chunk_size=10)


def test_a_diverging_training_stops_with_a_diagnosis_and_draws_its_best_snapshot():
    """A hair-trigger divergence factor makes any loss rise count as divergence."""
    cds = CDSInference(
        _normal_model,
        num_samples=50,
        progress_bar=False,
        correction=None,
        monitor=MonitorConfig(divergence_factor=1.0 + 1e-9, patience=1),
        whitening=None,
        **{**SMALL, "num_train_steps": 400},
    )
    with pytest.warns(TrainingDivergedWarning, match="diverged by iteration"):
        cds.run(jax.random.key(0))
    assert cds.is_trained
    assert cds.training_iterations < 400
    assert cds.snapshot.iteration <= cds.training_iterations
    assert cds.get_samples()["x"].shape == (50, 2)


def test_the_untrained_whitening_gaussian_is_a_candidate():
    """A Gaussian posterior: the fitted whitening is exact, so nothing beats step 0."""
    cds = CDSInference(
        _normal_model, num_samples=200, progress_bar=False, correction=None, **SMALL
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingDivergedWarning)
        cds.run(jax.random.key(1))
    assert cds.snapshot.iteration == 0
    assert cds.weights_summary.ess > 0.99


def test_plateau_counts_iterations_since_the_last_ten_percent_improvement():
    """The mark moves only on a 10 % improvement; the plateau is counted from it."""
    monitor = TrainingMonitor(
        lambda d: d, MonitorConfig(plateau_iterations=100, plateau_tolerance=0.1)
    )
    divergences = {0: 0.6, 50: 0.3, 100: 0.285, 150: 0.275, 200: 0.28, 250: 0.26}
    plateaus = {}
    for iteration, d in divergences.items():
        monitor.observe(iteration, _weights_with_divergence(d), None)
        plateaus[iteration] = monitor.plateau(iteration)
    assert monitor.mark[0] == 250  # 0.26 < 0.9 * 0.3; 0.285 and 0.275 were not
    assert [i for i, p in plateaus.items() if p] == [150, 200]
    assert "no 10% improvement" in plateaus[150] and "(iteration 50)" in plateaus[150]


def _weights_with_divergence(target):
    """Log weights ``(0, p)`` whose Renyi-1/2 divergence is ``target`` (bisection)."""
    low, high = 0.0, 100.0
    for _ in range(100):
        middle = 0.5 * (low + high)
        if renyi_half_divergence([0.0, middle]) < target:
            low = middle
        else:
            high = middle
    return np.array([0.0, low])
