"""The benchmark runner: the quick paper suite end to end, and the method hook."""

import json
import os
import subprocess
import sys

import jax
import pytest

from benchmarks.methods import METHODS, Budget, MethodRun, register_method
from benchmarks.report import render_results, write_benchmarks
from benchmarks.run import run_suite
from benchmarks.targets import make_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_paper_run(tmp_path_factory):
    """``python -m benchmarks.run --suite paper --budget quick``, as a user runs it.

    One of the four targets (the multimodal GMM grid), to keep the suite short; the
    others share every code path but their metrics, which ``test_benchmark_metrics``
    and ``test_benchmark_targets`` cover.
    """
    out = tmp_path_factory.mktemp("quick")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--suite",
            "paper",
            "--budget",
            "quick",
            "--targets",
            "gmm_grid",
        ]
        + ["--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


def test_quick_paper_suite_runs_within_its_budget(quick_paper_run):
    out = quick_paper_run
    with open(out / "results.json") as f:
        results = json.load(f)
    assert list(results["targets"]) == ["gmm_grid"]
    for target in results["targets"].values():
        methods = [row["method"] for row in target["rows"]]
        assert {"SCDS(1)", "SCDS(16)", "NUTS"} <= set(methods)
        # The budget bounds the work (not seconds): the quick budget's iterations.
        scds = next(row for row in target["rows"] if row["method"] == "SCDS(1)")
        assert scds["info"]["num_train_steps"] == 60
        for row in target["rows"]:
            assert row["metrics"]["sinkhorn"] >= 0.0
            assert row["gradient_evaluations"] >= 0
    gmm = {row["method"]: row for row in results["targets"]["gmm_grid"]["rows"]}
    assert gmm["SCDS(1)"]["network_evaluations"] == 1
    assert 0 <= gmm["SCDS(1)"]["metrics"]["modes_hit"] <= 9
    for name in ("gmm_grid", "steps"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 0
    markdown = (out / "results.md").read_text()
    assert "paper DIS(128)" in markdown and "| gmm_grid | 2 |" in markdown


def test_benchmarks_md_is_rendered_from_cpu_and_gpu_results_only(
    quick_paper_run, tmp_path
):
    out = quick_paper_run
    with open(out / "results.json") as f:
        results = json.load(f)
    for budget in ("quick", "cpu"):
        folder = tmp_path / "results" / f"paper-{budget}"
        folder.mkdir(parents=True)
        with open(folder / "results.json", "w") as f:
            json.dump({**results, "budget": budget}, f)
    write_benchmarks(str(tmp_path / "results"), str(tmp_path / "BENCHMARKS.md"))
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert text.count("## Suite `paper`") == 1
    assert "budget `cpu`" in text and "budget `quick`" not in text


def test_a_registered_method_adds_a_row(tmp_path):
    """The hook later methods use: one function, and every table has its row."""

    @register_method("exact_sampler")
    def exact(target, budget, rng_key):
        draws = target.exact_sampler(rng_key, budget.num_draws)
        return [MethodRun("exact sampler", {"x": draws}, 0.0, 0.0, None, 0)]

    try:
        budget = Budget("quick", {}, {}, {}, num_draws=300)
        target = make_target("gmm_grid")
        results = run_suite(
            "paper", budget, [target], ["exact_sampler"], str(tmp_path), plots=False
        )
    finally:
        del METHODS["exact_sampler"]
    rows = {r["method"]: r for r in results["targets"]["gmm_grid"]["rows"]}
    assert set(rows) == {"exact draws (n=300)", "exact sampler"}
    # Exact draws against exact draws: at the floor, and all nine modes found.
    assert rows["exact sampler"]["metrics"]["modes_hit"] == 9
    assert rows["exact sampler"]["metrics"]["sinkhorn"] < 0.5
    assert "exact sampler" in render_results(results)
    assert jax.numpy.isfinite(rows["exact sampler"]["metrics"]["mmd2"])


def test_readme_quickstart_code_is_the_first_python_block():
    from benchmarks.readme_quickstart import quickstart_code

    with open(os.path.join(ROOT, "README.md")) as f:
        code = quickstart_code(f.read())
    assert "CDSInference(model" in code and "log_evidence()" in code
    with pytest.raises(ValueError, match="no"):
        quickstart_code("no code here")


def test_set_overrides_the_budget_for_the_chosen_targets():
    import argparse

    from benchmarks.methods import BUDGETS
    from benchmarks.run import parse_settings, with_settings
    from benchmarks.targets import make_target

    parser = argparse.ArgumentParser()
    settings = parse_settings(parser, ["num_sde_steps=128", "whitening=null"])
    assert settings == {"num_sde_steps": 128, "whitening": None}
    budget = with_settings(BUDGETS["cpu"], settings, [make_target("mw52")])
    assert budget.overrides["mw52"] == dict(
        num_train_steps=1000, batch_size=256, num_sde_steps=128, whitening=None
    )
    assert BUDGETS["cpu"].overrides["mw52"]["num_sde_steps"] == 64  # not mutated
    with pytest.raises(SystemExit):
        parse_settings(parser, ["num_sde_steps"])


def _row(method, mean_error, **info):
    return {
        "method": method,
        "metrics": {"max_mean_error": mean_error, "max_log_sd_ratio": 0.01},
        "info": info,
        "train_seconds": 1.0,
        "sample_seconds": 0.1,
        "network_evaluations": 1,
        "gradient_evaluations": 7,
    }


def test_the_posteriors_table_reads_the_one_step_sampler_each_target_has():
    from benchmarks.report import _reference_table

    info = {"num_train_steps": 10, "batch_size": 4}
    targets = {
        "a": {
            "dim": 2,
            "reference": "posteriordb",
            "rows": [_row("SCDS(1)", 0.5, **info)],
        },
        "b": {
            "dim": 2,
            "reference": "posteriordb",
            "rows": [_row("CDDS-DDS(1)", 0.25, **info), _row("CDDS-DDS(4)", 0.125)],
        },
    }
    a, b = (
        line
        for line in _reference_table(targets)
        if line.startswith("| a") or line.startswith("| b")
    )
    assert "| SCDS | - | 0.500 / 0.010 |" in a
    assert "| CDDS-DDS | - | 0.250 / 0.010 | 0.125 / 0.010 (k=4) |" in b
