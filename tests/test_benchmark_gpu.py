"""The GPU check runs end to end at toy sizes on the CPU.

It runs as its own process (as a user runs it), with ``-X faulthandler`` so that a
crash inside XLA shows its stack.  (Twice, in CI runs of the whole suite, the worker
running it in-process died inside XLA's compiler: that worker had run out of memory
mappings, see ``conftest.py``.)
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_smoke_mode_reports_every_part(tmp_path):
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-m", "benchmarks.gpu", "--smoke"]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0, result.stderr[-5000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    training = results["throughput"]["training"]
    assert [row["batch_size"] for row in training] == [8, 16]
    assert all(row["iterations_per_second"] > 0 for row in training)
    assert all(row["step_memory_bytes"] > 0 for row in training)
    drawing = results["throughput"]["drawing"]
    assert [row["weights"] for row in drawing] == [False, True]
    # Exact weights cost a Jacobian on top of the draw.
    assert drawing[1]["flops_per_draw"] > drawing[0]["flops_per_draw"] > 0
    matmul = results["throughput"]["matmul_flops_per_second"]
    assert matmul["layer_shape"] > 0 and matmul["square"] > 0
    report = (tmp_path / "gpu.md").read_text()
    assert "iterations/s" in report and "SCDS-paper(1)" in report
    assert "Matmul rate of this device" in report
