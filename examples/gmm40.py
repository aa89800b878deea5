"""Example: Mixture of 40 Gaussians
================================

A 2-D mixture of 40 unit Gaussians with equal weights, means uniform in
``[-40, 40]^2`` (the GMM-40 target of the "Beyond ELBOs" benchmark; ``log Z = 0``).
MCMC started in one mode stays there: NUTS with defaults finds one to three modes.
A diffusion sampler transports the whole prior, so it can cover all of them.

The density is encoded as a user would write an unnormalised target: an improper flat
site plus ``numpyro.factor``.  ``--whitening-scale 40`` tells the sampler the scale of
the problem (``whitening=(0, 40)``); without it the scale is fitted automatically.

References:
    Blessing et al. (2024). Beyond ELBOs: A Large-Scale Evaluation of Variational
    Methods for Sampling.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _common import parse, parser_with_common_flags, run_inference, run_nuts
from jax.scipy.special import logsumexp

from numpyro_cds.diagnostics import mode_statistics


def make_means(path=None):
    """The 40 means: from a JSON file ``{"means": [[x, y], ...]}`` or from key 0."""
    if path:
        with open(path) as f:
            return jnp.asarray(json.load(f)["means"], jnp.float32)
    return jax.random.uniform(jax.random.key(0), (40, 2), minval=-40.0, maxval=40.0)


def mixture_logdensity(x, means):
    """Normalised log density of the equal-weight unit-Gaussian mixture."""
    components = -0.5 * jnp.sum((x - means) ** 2, -1) - jnp.log(2 * jnp.pi)
    return logsumexp(components) - jnp.log(means.shape[0])


def model(means):
    """GMM-40 as an improper flat site plus a factor."""
    x = numpyro.sample(
        "x", dist.ImproperUniform(dist.constraints.real, (), event_shape=(2,))
    )
    numpyro.factor("mixture", mixture_logdensity(x, means))


def report(name, draws, means):
    """Print mode coverage."""
    stats = mode_statistics(np.asarray(draws), np.asarray(means))
    print(
        f"{name}: {stats['modes_found']}/40 modes with >= 0.5 % of the draws, "
        f"{100 * stats['near_fraction']:.1f} % of draws within 3 sd of a mode"
    )


def main(args):
    """Run the example."""
    means = make_means(args.means)
    whitening = "auto" if args.whitening_scale is None else (0.0, args.whitening_scale)
    cds = run_inference(
        model, args, jax.random.key(args.seed), means, whitening=whitening
    )
    cds.print_summary()
    draws = {f"CDS ({cds.num_steps} step)": np.asarray(cds.get_samples()["x"])}
    report(next(iter(draws)), next(iter(draws.values())), means)
    if args.compare_nuts:
        mcmc = run_nuts(model, args, means)
        draws["NUTS"] = np.asarray(mcmc.get_samples()["x"])
        report("NUTS", draws["NUTS"], means)
    if args.plot and len(draws) > 1:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(draws), figsize=(5 * len(draws), 5))
        for ax, (name, x) in zip(np.atleast_1d(axes), draws.items(), strict=True):
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
            ax.scatter(means[:, 0], means[:, 1], c="red", marker="x", s=20)
            ax.set(title=name, xlim=(-50, 50), ylim=(-50, 50))
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"saved {args.plot}")


if __name__ == "__main__":
    parser = parser_with_common_flags("GMM-40 with CDSInference", num_samples=10000)
    parser.add_argument(
        "--whitening-scale",
        type=float,
        default=None,
        help="whitening=(0, scale) instead of the automatic fit",
    )
    parser.add_argument("--means", default=None, help="JSON file with the 40 means")
    parser.add_argument("--plot", default="gmm40.png")
    main(parse(parser))
