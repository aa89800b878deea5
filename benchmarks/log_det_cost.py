"""Cost of the flow's log-determinants: none, exact, stochastic, against dimension.

Usage (from the repository root)::

    python -m benchmarks.log_det_cost

Times (median of 3, compiled) one batch of 1000 draws of an untrained width-64
control network on a standard Gaussian target, at k = 1 and k = 4 steps.  It chose
``EXACT_LOG_DET_MAX_DIM``: exact log-determinants are cheaper than the stochastic
estimator up to a dimension between 200 and 400.
"""

import time

import jax
import numpy as np

from numpyro_cds.flow import run_flow
from numpyro_cds.networks import ControlNetwork
from numpyro_cds.sde import LinearSchedule


def _median_seconds(fn, x0, repeats=3):
    jax.block_until_ready(fn(jax.random.key(0), x0))
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(repeat + 1), x0))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    """Print seconds per 1000 draws for each dimension, step count and log-det kind."""
    for dim in (10, 50, 100, 200, 400):
        network = ControlNetwork(dim, width=64, depth=2, key=jax.random.key(0))
        x0 = jax.random.normal(jax.random.key(1), (1000, dim))
        row = []
        for steps in (1, 4):
            for kind in (None, "exact", "stochastic"):
                flow = jax.jit(
                    lambda key, x0, network=network, steps=steps, kind=kind: run_flow(
                        network,
                        LinearSchedule(),
                        lambda x: -x,
                        x0,
                        steps,
                        1e6,
                        None if kind is None else 6.0,
                        log_det=kind or "exact",
                        rng_key=key,
                    )
                )
                seconds = _median_seconds(flow, x0)
                row.append(f"k={steps} {kind or 'no log-det'}: {seconds:.4f}")
        print(f"dim {dim}: " + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()
