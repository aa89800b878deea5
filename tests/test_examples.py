"""The examples run as scripts with tiny settings."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--num-samples",
    "200",
    "--num-train-steps",
    "20",
    "--batch-size",
    "16",
    "--num-sde-steps",
    "4",
    "--no-progress-bar",
]


def _run(script, *flags, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", script), *TINY, *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_eight_schools_with_nuts_comparison_plot_and_refit(tmp_path):
    out = _run(
        "eight_schools.py",
        "--compare-nuts",
        "--num-nuts-samples",
        "50",
        "--plot",
        str(tmp_path / "es.png"),
        "--refit",
        "0.3",
        cwd=tmp_path,
    )
    assert "theta[0]" in out and "NUTS" in out
    assert "Refit on new data y + 0.3 sigma z" in out
    assert (tmp_path / "es.png").stat().st_size > 0


@pytest.mark.parametrize("script, method", [("funnel.py", "scds"), ("gmm40.py", "dds")])
def test_synthetic_examples(script, method, tmp_path):
    # The MCMC correction runs in the eight-schools example; here resampling only.
    flags = ("--plot", "", "--correction", "resample", "--method", method)
    out = _run(script, *flags, cwd=tmp_path)
    assert f"CDSInference (method {method!r})" in out
