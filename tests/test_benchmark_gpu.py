"""The GPU check runs end to end at toy sizes on the CPU."""

import json

from benchmarks import gpu


def test_gpu_check_smoke_mode_reports_every_part(tmp_path):
    gpu.main(["--smoke", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "gpu.json").read_text())
    training = results["throughput"]["training"]
    assert [row["batch_size"] for row in training] == [8, 16]
    assert all(row["iterations_per_second"] > 0 for row in training)
    assert all(row["step_memory_bytes"] > 0 for row in training)
    drawing = results["throughput"]["drawing"]
    assert [row["weights"] for row in drawing] == [False, True]
    # Exact weights cost a Jacobian on top of the draw.
    assert drawing[1]["flops_per_draw"] > drawing[0]["flops_per_draw"] > 0
    report = (tmp_path / "gpu.md").read_text()
    assert "iterations/s" in report and "SCDS-paper(1)" in report
