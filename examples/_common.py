"""Shared command-line flags and runners of the example scripts."""

import argparse
import time

import jax
import numpyro
from numpyro.infer import MCMC, NUTS

from numpyro_cds import CDSInference, ConsistencyConfig, TrainConfig
from numpyro_cds.session import METHODS, TRAINED_TEACHERS


def _count_or_auto(text):
    """``'auto'`` or a positive integer, for ``--num-train-steps``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None


def parser_with_common_flags(description, *, num_samples):
    """An argparse parser with the flags every example takes."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--num-samples", type=int, default=num_samples, help="draws")
    parser.add_argument("--num-chains", type=int, default=1, help="groups of draws")
    parser.add_argument(
        "--method",
        default="cdds",
        choices=list(METHODS),
        help="the sampler (docs/methods.rst): consistency-distilled (CDDS, trains a "
        "--teacher-method teacher first), self-consistent (SCDS), or a diffusion "
        "sampler (DIS, PIS, DDS: SDE draws)",
    )
    parser.add_argument(
        "--teacher-method",
        default=None,
        choices=list(TRAINED_TEACHERS),
        help="with --method cdds: the teacher it trains (None: dds)",
    )
    parser.add_argument(
        "--num-steps",
        type=int,
        default=None,
        help="steps per draw (1, 2, 4, ...); default: the method's (1, or "
        "--num-sde-steps for the diffusion samplers)",
    )
    parser.add_argument(
        "--num-train-steps",
        type=_count_or_auto,
        default=TrainConfig().num_train_steps,
        help="training iterations, or 'auto' (until the held-out score stops "
        f"improving, at most {TrainConfig().max_train_steps})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=ConsistencyConfig().batch_size,
        help="paths per training iteration",
    )
    parser.add_argument(
        "--num-sde-steps",
        type=int,
        default=ConsistencyConfig().num_sde_steps,
        help="steps of the training paths (a power of 2)",
    )
    parser.add_argument(
        "--correction",
        default="auto",
        choices=["auto", "mcmc", "resample", "none"],
        help="what run() does with the draws: resampling alone if the weights are "
        "healthy, else with MALA moves (auto); resampling and MALA moves; "
        "resampling only; or none (the sampler's own draws)",
    )
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "gpu"], help="JAX platform"
    )
    parser.add_argument(
        "--compare-nuts",
        action="store_true",
        help="run NUTS on the same model and plot both",
    )
    parser.add_argument(
        "--num-nuts-samples",
        type=int,
        default=1000,
        help="NUTS warm-up and draws per chain (2 chains)",
    )
    parser.add_argument(
        "--no-progress-bar", action="store_true", help="no tqdm bar while training"
    )
    return parser


def parse(parser):
    """Parse the flags and select the device."""
    args = parser.parse_args()
    numpyro.set_platform(args.device)
    return args


def run_inference(model, args, rng_key, *model_args, **options):
    """Train a CDSInference sampler with the example's flags, then draw."""
    cds = CDSInference(
        model,
        num_samples=args.num_samples,
        num_chains=args.num_chains,
        method=args.method,
        teacher_method=args.teacher_method,
        num_steps=args.num_steps,
        num_train_steps=args.num_train_steps,
        batch_size=args.batch_size,
        num_sde_steps=args.num_sde_steps,
        progress_bar=not args.no_progress_bar,
        correction=None if args.correction == "none" else args.correction,
        **options,
    )
    start = time.perf_counter()
    cds.run(rng_key, *model_args)
    seconds = time.perf_counter() - start
    print(f"CDSInference (method {args.method!r}): {seconds:.1f} s in total")
    return cds


def run_nuts(model, args, *model_args):
    """NUTS with defaults, 2 chains, on the same model."""
    mcmc = MCMC(
        NUTS(model),
        num_warmup=args.num_nuts_samples,
        num_samples=args.num_nuts_samples,
        num_chains=2,
        chain_method="sequential",
        progress_bar=not args.no_progress_bar,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.key(args.seed + 1), *model_args)
    print(f"NUTS: {time.perf_counter() - start:.1f} s in total")
    return mcmc
