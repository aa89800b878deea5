"""Run the README's quick start as written and check what it promises.

Usage (from the repository root)::

    python -m benchmarks.readme_quickstart

Extracts the first ``python`` code block of ``README.md``, runs it unchanged, and
reports every warning it raised, the Pareto k-hat of its draws' importance weights and
its ``log Z`` against the quadrature value of the eight-schools model (-31.3113,
``tests/test_infer_weights.py``) in standard errors.
"""

from __future__ import annotations

import argparse
import os
import re
import time
import warnings

EIGHT_SCHOOLS_LOG_Z = -31.3113


def quickstart_code(readme: str) -> str:
    """The first fenced ``python`` block of ``readme``."""
    match = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    if match is None:
        raise ValueError("README.md has no ```python code block.")
    return match.group(1)


def main(argv=None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args(argv)
    with open(args.readme) as f:
        code = quickstart_code(f.read())
    namespace: dict = {"__name__": "readme"}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, os.path.abspath(args.readme), "exec"), namespace)
    seconds = time.perf_counter() - start
    cds = namespace["cds"]
    summary = cds.weights_summary
    log_z, se = namespace["log_z"], namespace["se"]
    print(f"\nREADME quick start: {seconds:.0f} s")
    relevant = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
    print(f"warnings: {len(relevant)}")
    for w in relevant:
        print(f"  {w.category.__name__}: {str(w.message)[:300]}")
    print(
        f"k-hat {summary.pareto_k:.2f}, ESS {summary.ess:.3f}, log Z {log_z:.3f} +- "
        f"{se:.3f} (quadrature {EIGHT_SCHOOLS_LOG_Z}: "
        f"{(log_z - EIGHT_SCHOOLS_LOG_Z) / se:+.1f} se); snapshot of iteration "
        f"{cds.snapshot.iteration} of {cds.training_iterations}"
    )


if __name__ == "__main__":
    main()
