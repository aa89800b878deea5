r"""Example: training on several processes
=======================================

The eight-schools sampler trained by several processes at once, with JAX's own
distributed runtime (``jax.distributed.initialize``).  Every process runs this same
script; together they train one sampler, each process simulating its share of every
batch of paths, and each ends with the same parameters and the same draws.

On one machine, ``--launch 2`` starts two processes that talk over 127.0.0.1 (CPU
collectives through Gloo)::

    python examples/distributed.py --launch 2

On a cluster, start the script once per host with the same ``--coordinator`` (the
address of process 0) and ``--num-processes``, and each host's ``--process-id``::

    python examples/distributed.py --coordinator 10.0.0.1:1234 --num-processes 4 \
        --process-id 0

Each process prints a checksum of the trained parameters; ``--params-out`` makes
process 0 save them (``.npy``) to compare with a one-process run.
"""

import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
from _common import parse, parser_with_common_flags


def launch(count, argv):
    """Run this script as ``count`` local processes; fail if any fails.

    Each process's standard output is printed once it has ended, process by process
    (written to one terminal, their lines could interleave mid-line); progress bars
    and errors go to the shared standard error as they come.
    """
    coordinator = "127.0.0.1:" + str(12000 + os.getpid() % 20000)
    common = [sys.executable, os.path.abspath(__file__), *argv]
    common += ["--coordinator", coordinator, "--num-processes", str(count)]
    outputs = [tempfile.TemporaryFile("w+") for _ in range(count)]
    processes = [
        subprocess.Popen([*common, "--process-id", str(i)], stdout=outputs[i])
        for i in range(count)
    ]
    codes = [p.wait() for p in processes]
    for output in outputs:
        output.seek(0)
        sys.stdout.write(output.read())
        output.close()
    sys.stdout.flush()
    if any(codes):
        sys.exit(f"processes exited with codes {codes}")


def flat_parameters(cds):
    """The trained network's parameters as one vector."""
    import equinox as eqx

    leaves = jax.tree.leaves(eqx.filter(cds.trained.network, eqx.is_inexact_array))
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])


def main(args):
    """Run one process of the example."""
    if args.num_processes > 1:
        if args.device == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    # Imported after initialize: nothing may touch the devices before it.
    from _common import run_inference
    from eight_schools import SIGMA, Y, model

    name = f"process {jax.process_index()} of {jax.process_count()}"
    print(f"{name}: devices {jax.devices()}", flush=True)
    cds = run_inference(model, args, jax.random.key(args.seed), SIGMA, Y)
    params = flat_parameters(cds)
    mean_mu = float(np.mean(cds.get_samples()["mu"]))
    print(
        f"{name}: {params.size} parameters, sum {params.sum():.6g}, "
        f"norm {np.linalg.norm(params):.6g}; posterior mean of mu {mean_mu:.4f}",
        flush=True,
    )
    if args.params_out and jax.process_index() == 0:
        np.save(args.params_out, params)
        print(f"saved {args.params_out}")


if __name__ == "__main__":
    parser = parser_with_common_flags(
        "Eight schools trained by several processes", num_samples=1000
    )
    parser.add_argument(
        "--launch",
        type=int,
        default=0,
        help="start this many local processes (coordinator on 127.0.0.1)",
    )
    parser.add_argument(
        "--coordinator", default="127.0.0.1:1234", help="address of process 0"
    )
    parser.add_argument("--num-processes", type=int, default=1, help="processes")
    parser.add_argument("--process-id", type=int, default=0, help="this process")
    parser.add_argument(
        "--params-out", default="", help="process 0 saves the parameters here (.npy)"
    )
    arguments = parse(parser)
    if arguments.launch:
        argv = sys.argv[1:]
        at = next(i for i, a in enumerate(argv) if a.startswith("--launch"))
        launch(arguments.launch, argv[:at] + argv[at + 1 + ("=" not in argv[at]) :])
    else:
        main(arguments)
