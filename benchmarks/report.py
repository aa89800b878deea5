"""Markdown tables of benchmark results, and the generated ``BENCHMARKS.md``."""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import time

import jax

from .methods import scds_steps
from .targets import PAPER_FLOORS

__all__ = ["machine_info", "render_results", "write_benchmarks"]

_SUITE_ORDER = ("paper", "extended", "evidence", "posteriors", "all")
_BUDGET_ORDER = ("cpu", "paper", "gpu")


def docstring_parser(doc: str) -> argparse.ArgumentParser:
    """An argparse parser whose ``--help`` shows a module docstring.

    The first line is the description; the rest (usage, what it measures) follows
    as written.
    """
    return argparse.ArgumentParser(
        description=doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(doc.splitlines()[2:]),
    )


def machine_info() -> dict:
    """Processor, cores, JAX version and backend, device and date of this run."""
    return {
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "date": time.strftime("%Y-%m-%d"),
    }


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** (-digits)):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _by_method(target: dict) -> dict:
    return {row["method"]: row for row in target["rows"]}


def _largest(rows: dict, label: str = "SCDS") -> str | None:
    """The ``label(k)`` row with the most steps ``k``, or None."""

    def steps(method):
        match = re.fullmatch(rf"{re.escape(label)}\((\d+)\)", method)
        return int(match.group(1)) if match else 0

    rows_of_label = [m for m in rows if steps(m)]
    return max(rows_of_label, key=steps) if rows_of_label else None


def _cell(by_method: dict, method: str | None, render) -> str | None:
    """``render(metrics)`` of ``method``'s row, or None if it has no such row."""
    row = by_method.get(method)
    return None if row is None else render(row["metrics"])


def _floor(by_method: dict, method: str) -> str | None:
    """The exact-draw floor row at the sample size of ``method``'s row."""
    row = by_method.get(method)
    if row is None:
        return None
    return f"exact draws (n={row['metrics']['num_draws']})"


def _sinkhorn_summary(targets: dict) -> list[str]:
    """Each method's Sinkhorn beside the same-n exact-draw floor, as ``value (+excess)``.

    The paper's columns are its values at n = 1e5 with the excess over the
    extrapolated 1e5 floor (:data:`~benchmarks.targets.PAPER_FLOORS`).
    """
    header = [
        "target",
        "D",
        "exact-draw floor (n)",
        "SCDS(1)",
        "SCDS(N)",
        "SCDS(1)+MCMC",
        "SCDS-paper(1)",
        "DIS(N)",
        "PIS(N)",
        "DDS(N)",
        "CDDS(1)",
        "NUTS",
        "paper floor (n=1e5)",
        "paper PIS(128)",
        "paper DDS(128)",
        "paper DIS(128)",
        "paper SCDS(1)",
        "paper CDDS(1)",
    ]
    rows = []
    for name, target in targets.items():
        by_method = _by_method(target)
        largest = _largest(by_method)
        largest_diffusion = {
            label: _largest(by_method, label) for label in ("DIS", "PIS", "DDS")
        }

        def with_excess(method, by_method=by_method):
            """``value (+excess over the same-n floor)``."""
            row, floor = by_method.get(method), by_method.get(_floor(by_method, method))
            if row is None:
                return None
            value = row["metrics"]["sinkhorn"]
            if floor is None:
                return _fmt(value)
            return f"{_fmt(value)} ({value - floor['metrics']['sinkhorn']:+.3f})"

        labels = ("SCDS(1)", "SCDS-paper(1)", "CDDS(1)", *largest_diffusion.values())
        first = next((m for m in labels if m in by_method), None)
        floor = by_method.get(_floor(by_method, first))
        paper, paper_floor = target["paper"], PAPER_FLOORS.get(name)

        def paper_cell(method, paper=paper, paper_floor=paper_floor):
            if method not in paper:
                return None
            value = paper[method][0]
            if paper_floor is None:
                return _fmt(value)
            return f"{_fmt(value)} ({value - paper_floor:+.3f})"

        rows.append(
            [
                name,
                target["dim"],
                None
                if floor is None
                else f"{_fmt(floor['metrics']['sinkhorn'])} "
                f"({floor['metrics']['num_draws']})",
                with_excess("SCDS(1)"),
                f"{with_excess(largest)} (N={scds_steps(largest)})"
                if largest
                else None,
                with_excess("SCDS(1)+MCMC"),
                with_excess("SCDS-paper(1)"),
                *(
                    f"{with_excess(m)} (N={m[4:-1]})" if m else None
                    for m in largest_diffusion.values()
                ),
                with_excess("CDDS(1)"),
                with_excess("NUTS"),
                paper_floor,
                *(
                    paper_cell(m)
                    for m in ("PIS(128)", "DDS(128)", "DIS(128)", "SCDS(1)", "CDDS(1)")
                ),
            ]
        )
    return _table(header, rows)


def _cost_columns(row: dict) -> list:
    return [
        f"{row['train_seconds']:.1f}",
        f"{row['sample_seconds']:.3g}",
        row["network_evaluations"],
        row["gradient_evaluations"],
    ]


def _weights_cell(row: dict | None) -> str | None:
    """``log Z +- se / ESS / k-hat`` of a row with an importance-weight summary.

    ``(folds)`` follows where a flow step folded space (the weights are not exact).
    """
    weights = None if row is None else row["info"].get("weights")
    if weights is None:
        return None
    folds = any(
        "fold space" in message for message in row["info"].get("unreliable", [])
    )
    return (
        f"{weights['log_evidence']:.3f} +- {weights['standard_error']:.3f} / "
        f"{weights['ess']:.3g} / {weights['pareto_k']:.2f}"
        + (" (folds)" if folds else "")
    )


def _details(name: str, target: dict) -> list[str]:
    """Every row of one target: its metrics, weights and costs."""
    keys = ["num_draws", "sinkhorn", "sinkhorn_converged"]
    keys += ["sinkhorn_divergence", "mmd2", "emc", "modes_hit", "mode_weight_error"]
    keys += ["quantile_error", "log_z_error", "max_mean_error", "max_log_sd_ratio"]
    labels = ["n", "Sinkhorn", "converged", "Sinkhorn div.", "MMD^2", "EMC"]
    labels += ["modes hit", "max mode weight error", "max quantile error (x0)"]
    labels += ["abs. log Z error", "max mean err", "max log sd ratio"]
    present = [k for k in keys if any(k in r["metrics"] for r in target["rows"])]
    header = ["method"] + [labels[keys.index(k)] for k in present]
    with_weights = any("weights" in r["info"] for r in target["rows"])
    header += ["log Z +- se / ESS / k-hat"] if with_weights else []
    header += ["train s", "sample s", "network evals / draw", "gradient evals"]
    rows = [
        [row["method"]]
        + [row["metrics"].get(k) for k in present]
        + ([_weights_cell(row)] if with_weights else [])
        + _cost_columns(row)
        for row in target["rows"]
    ]
    title = f"#### {name} ({target['dim']}-D): {target['description']}"
    return [title, ""] + _table(header, rows)


def _correction_cell(row: dict | None) -> str | None:
    """Seconds and gradient evaluations the MCMC correction added."""
    if row is None:
        return None
    info = row["info"]["correction"]
    return (
        f"{row['sample_seconds']:.1f} / {info['gradient_evaluations']} "
        f"(acceptance {info['acceptance_rate']:.2f})"
    )


#: The one-step samplers the posteriors table reads, in order of preference: the
#: first with a ``LABEL(1)`` row in a target fills that target's row.
ONE_STEP_LABELS = ("SCDS", "CDDS-DDS")


def _reference_table(targets: dict) -> list[str]:
    header = [
        "posterior",
        "D",
        "reference",
        "sampler",
        "whitening only mean err / log sd",
        "1-step mean err / log sd",
        "most steps mean err / log sd",
        "1-step+resample mean err / log sd",
        "1-step+MCMC mean err / log sd",
        "NUTS mean err / log sd",
        "iterations x batch",
        "train + sample s",
        "NUTS s",
        "whitening only log Z +- se / ESS / k-hat",
        "1-step log Z +- se / ESS / k-hat",
        "MCMC correction s / gradient evals",
        "sampler gradient evals",
        "NUTS gradient evals",
        "NUTS divergences / max R-hat / min ESS",
    ]
    rows = []
    for name, target in targets.items():
        by_method = _by_method(target)
        label = next((x for x in ONE_STEP_LABELS if f"{x}(1)" in by_method), "SCDS")
        largest = _largest(by_method, label)

        def errors(method, by_method=by_method):
            return _cell(
                by_method,
                method,
                lambda m: (
                    f"{_fmt(m['max_mean_error'])} / {_fmt(m['max_log_sd_ratio'])}"
                ),
            )

        one_step, nuts = by_method.get(f"{label}(1)"), by_method.get("NUTS")
        rows.append(
            [
                name,
                target["dim"],
                target["reference"],
                label if one_step else None,
                errors("whitening only"),
                errors(f"{label}(1)"),
                f"{errors(largest)} (k={largest[len(label) + 1 : -1]})"
                if largest
                else None,
                errors(f"{label}(1)+resample"),
                errors(f"{label}(1)+MCMC"),
                errors("NUTS") if target["reference"] != "NUTS" else "(reference)",
                f"{one_step['info']['num_train_steps']} x "
                f"{one_step['info']['batch_size']}"
                if one_step
                else None,
                f"{one_step['train_seconds']:.1f} + {one_step['sample_seconds']:.3f}"
                if one_step
                else None,
                f"{nuts['train_seconds'] + nuts['sample_seconds']:.1f}"
                if nuts
                else None,
                _weights_cell(by_method.get("whitening only")),
                _weights_cell(one_step),
                _correction_cell(by_method.get(f"{label}(1)+MCMC")),
                one_step["gradient_evaluations"] if one_step else None,
                nuts["gradient_evaluations"] if nuts else None,
                f"{nuts['info']['divergences']} / {nuts['info']['max_r_hat']:.3f} / "
                f"{nuts['info']['min_ess']:.0f}"
                if nuts
                else None,
            ]
        )
    return _table(header, rows)


def render_results(results: dict) -> str:
    """The markdown section of one results file."""
    machine = results["machine"]
    settings = results["budget_settings"]
    lines = [
        f"## Suite `{results['suite']}`, budget `{results['budget']}`",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {machine['processor']}, {machine['cores']} cores, "
        f"{machine['device']}, JAX {machine['jax']} on {machine['backend']}; "
        f"{machine['date']}. Seed {results['seed']}; "
        f"{_fmt(results.get('seconds', 0.0), 0)} s in all.",
        "",
        f"Budget: SCDS on synthetic targets `{json.dumps(settings['synthetic'])}`, "
        f"on posteriors `{json.dumps(settings['posterior'])}` (other settings: "
        f"CDSInference defaults; per-target changes: "
        f"`{json.dumps(settings.get('overrides', {}))}`); NUTS "
        f"`{json.dumps(settings['nuts'])}`; "
        f"{settings['num_draws']} SCDS and exact draws for the Sinkhorn cost "
        "(NUTS: its own draws, against exact draws of the same number, which is "
        "why each sample size has its exact-draw floor); the first 2000 of each for "
        "the Sinkhorn divergence, MMD and mode figures.",
        "",
    ]
    targets = results["targets"]
    synthetic = {n: t for n, t in targets.items() if t["reference"] == "exact draws"}
    others = {n: t for n, t in targets.items() if n not in synthetic}
    if synthetic:
        lines += [
            "### Sinkhorn (entropic transport cost, Euclidean cost, eps = 1e-3; lower "
            "is better) beside the paper's Table 1",
            "",
        ]
        lines += _sinkhorn_summary(synthetic)
        for name, target in synthetic.items():
            lines += _details(name, target)
    if others:
        lines += [
            "### Worst standardised mean error and worst |log sd ratio| over the "
            "parameters",
            "",
        ]
        lines += _reference_table(others)
        for name, target in others.items():
            lines += [""] + _details(name, target)
    return "\n".join(lines)


def write_benchmarks(results_dir: str, path: str) -> None:
    """Regenerate ``BENCHMARKS.md`` from every non-quick results file.

    Args:
        results_dir: folder holding ``<suite>-<budget>/results.json``,
            ``core/core.json`` and the ``<study>/section.md`` of dedicated studies.
        path: the markdown file to write.
    """
    from .core import render_markdown as render_core

    found = []
    for file in sorted(glob.glob(os.path.join(results_dir, "*", "results.json"))):
        with open(file) as f:
            results = json.load(f)
        if results.get("budget") in _BUDGET_ORDER:
            found.append(results)
    found.sort(
        key=lambda r: (_BUDGET_ORDER.index(r["budget"]), _SUITE_ORDER.index(r["suite"]))
    )
    sections = [render_results(r) for r in found]
    core = os.path.join(results_dir, "core", "core.json")
    if os.path.exists(core):
        with open(core) as f:
            sections.append(render_core(json.load(f)))
    # Dedicated studies (e.g. benchmarks.lgcp_evidence) write their own section.
    for file in sorted(glob.glob(os.path.join(results_dir, "*", "section.md"))):
        with open(file) as f:
            sections.append(f.read().strip())
    header = (
        "# Benchmarks\n\nGenerated by `python -m benchmarks.run --write-benchmarks` "
        "(or `python -m benchmarks.core --write-benchmarks`) from the results files "
        "under `results/`; each section shows the command that produced its figures. "
        "Do not edit by hand.\n\nWall times on the shared 2-core CPU vary by up to "
        "about 2x between runs (other jobs shared the machine during some of these "
        "runs); compare times within one table, whose rows ran in the same process."
        "\n\n"
    )
    with open(path, "w") as f:
        f.write(header + "\n\n".join(sections) + "\n")
