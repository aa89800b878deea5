"""Methods under comparison, and the hook that adds one.

A method is a function ``(target, budget, rng_key) -> list[MethodRun]``: it samples one
target within a budget and returns one row per variant (SCDS returns a row per number
of sampling steps).  :func:`register_method` adds it to :data:`METHODS`, which is all the
runner looks at, so a later method (CDDS, the DIS teacher, MCMC rejuvenation) adds a
row to every table by registering one function.

Gradient evaluations are counted from the algorithm's definition, per draw and in
total:

* SCDS training: each iteration simulates ``B`` Euler-Maruyama paths of ``N`` steps with
  a target score per step, and the self-consistency term adds one score at the
  teacher's midpoint per path: ``B (N + 1)`` per iteration.  Automatic whitening adds
  ``starts x steps x draws`` (24 x 500 x 64 by default).
* SCDS sampling with ``k`` steps: ``k - 1`` scores per draw (the first step starts at
  ``t = 0``, where the score has no weight) and ``k`` network evaluations.
* NUTS: the leapfrog steps of warm-up and sampling, summed over chains.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import numpy as np
from numpyro.diagnostics import summary
from numpyro.infer import MCMC, NUTS

from numpyro_cds import CDSInference, UnreliableDrawsWarning, summarize_weights
from numpyro_cds.consistency import ConsistencyConfig
from numpyro_cds.monitor import MonitorConfig
from numpyro_cds.train import TrainConfig
from numpyro_cds.whitening import WhiteningConfig

from .targets import BenchmarkTarget

__all__ = [
    "Budget",
    "BUDGETS",
    "MethodRun",
    "METHODS",
    "DEFAULT_METHODS",
    "register_method",
    "paper_preset",
    "run_nuts",
    "scds_steps",
]


@dataclass(frozen=True)
class Budget:
    """How much compute each method gets.

    Attributes:
        name: ``quick``, ``cpu`` or ``gpu``.
        synthetic: ``CDSInference`` keyword arguments for the synthetic targets.
        posterior: ``CDSInference`` keyword arguments for posteriordb and real data.
        nuts: ``num_warmup``, ``num_samples`` and ``num_chains`` of NUTS.
        num_draws: draws of each SCDS variant (and of the exact sampler).
        step_counts: SCDS sampling steps to evaluate; None for 1, 2, 4, ..., N.
        overrides: per-target changes to the SCDS settings (target name ->
            ``CDSInference`` keyword arguments), for targets whose gradient is too
            expensive for the budget; the tables show the settings used.
        checkpoint_dir: folder for SCDS training checkpoints (one per target), so
            that a rerun with the same settings reuses the trained samplers; None
            for none.
    """

    name: str
    synthetic: dict
    posterior: dict
    nuts: dict
    num_draws: int
    step_counts: tuple[int, ...] | None = None
    overrides: dict = field(default_factory=dict)
    checkpoint_dir: str | None = None


# The CDSInference defaults, which the posteriors and the evidence suite measure.
_DEFAULT_TRAINING = dict(
    num_train_steps=TrainConfig().num_train_steps,
    batch_size=ConsistencyConfig().batch_size,
    num_sde_steps=ConsistencyConfig().num_sde_steps,
)

BUDGETS = {
    "quick": Budget(
        "quick",
        synthetic=dict(
            num_train_steps=60,
            batch_size=64,
            num_sde_steps=16,
            whitening=None,
            correction_steps=100,
        ),
        posterior=dict(
            num_train_steps=60, batch_size=64, num_sde_steps=16, correction_steps=100
        ),
        nuts=dict(num_warmup=100, num_samples=100, num_chains=1),
        num_draws=500,
        step_counts=(1, 16),
    ),
    "cpu": Budget(
        "cpu",
        synthetic=dict(num_train_steps=4000, batch_size=256, num_sde_steps=128),
        posterior=_DEFAULT_TRAINING,
        nuts=dict(num_warmup=1000, num_samples=1000, num_chains=2),
        num_draws=6000,
        # Models whose gradient costs far more than eight schools' (5000 rows for
        # diamonds, a 100-step recursion for garch, 200 lags for arK, 100 rows for
        # blr, 1000 rows for low_dim_gauss_mix, which had not finished after 30 min at
        # the default) get a quarter of the iterations at half the batch, so that the
        # suite fits a CPU session.
        overrides={
            name: dict(num_train_steps=2000, batch_size=128, num_sde_steps=64)
            for name in (
                "low_dim_gauss_mix-low_dim_gauss_mix",
                "diamonds-diamonds",
                "garch-garch11",
                "arK-arK",
                "sblrc-blr",
                "nes2000-nes",
                "bball_drive_event_0-hmm_drive_0",
                # 100-step recursion; ~0.85 s an iteration at the defaults here.
                "stochastic_volatility-100_days",
            )
        }
        | {name: _DEFAULT_TRAINING for name in ("normal_mean", "linear_regression")}
        # 50-D with 5 double wells: a quarter of the synthetic budget fits a session.
        | {"mw52": dict(num_train_steps=1000, batch_size=256, num_sde_steps=64)}
        # Issue 4's GMM-40 setting: the whitening at the modes' scale.
        | {"gmm40_2d": dict(whitening=(0.0, 40.0))},
    ),
    # The paper's training budget for the synthetic targets (1e4 x 512 x 128), for
    # the ``scds-paper`` preset; draws and NUTS as at the ``cpu`` budget.
    "paper": Budget(
        "paper",
        synthetic=dict(num_train_steps=10000, batch_size=512, num_sde_steps=128),
        posterior=_DEFAULT_TRAINING,
        nuts=dict(num_warmup=1000, num_samples=1000, num_chains=2),
        num_draws=6000,
        step_counts=(1, 2, 4, 16, 128),
    ),
    "gpu": Budget(
        "gpu",
        synthetic=dict(num_train_steps=10000, batch_size=512, num_sde_steps=128),
        posterior=_DEFAULT_TRAINING,
        nuts=dict(num_warmup=1000, num_samples=1000, num_chains=2),
        num_draws=6000,
    ),
}


@dataclass
class MethodRun:
    """Draws of one method variant on one target, with its costs.

    Attributes:
        method: row label, e.g. ``SCDS(1)`` or ``NUTS``.
        samples: constrained draws per model site, draws on axis 0.
        train_seconds: wall time spent before drawing (training, warm-up).
        sample_seconds: wall time of drawing ``num_draws`` once compiled.
        network_evaluations: network evaluations per draw (None for MCMC).
        gradient_evaluations: target-gradient evaluations in total (training and
            drawing).
        info: method-specific figures (divergences, R-hat, ...).
    """

    method: str
    samples: dict
    train_seconds: float
    sample_seconds: float
    network_evaluations: int | None
    gradient_evaluations: int
    info: dict = field(default_factory=dict)


METHODS: dict[str, Callable] = {}
#: Flow rows with at most this many steps carry their importance-weight summary
#: (exact log-determinants cost ``dim`` forward passes per step and draw); SDE rows
#: always do (path weights cost nothing extra).
MAX_WEIGHTED_STEPS = 16
#: The methods a run uses when none are named (opt-in methods are left out).
DEFAULT_METHODS: list[str] = []
_SCDS_ROW = re.compile(r"SCDS\((\d+)\)")


def scds_steps(method: str) -> int | None:
    """Number of steps of an uncorrected ``SCDS(k)`` row label, else None."""
    match = _SCDS_ROW.fullmatch(method)
    return int(match.group(1)) if match else None


def register_method(name: str, default: bool = True) -> Callable:
    """Decorator adding a method ``(target, budget, rng_key) -> list[MethodRun]``.

    ``default=False`` registers an opt-in method, run only when named
    (``--methods``).
    """

    def register(fn):
        METHODS[name] = fn
        if default:
            DEFAULT_METHODS.append(name)
        return fn

    return register


def _timed(fn):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    return result, time.perf_counter() - start


def _numpy(tree):
    return {name: np.asarray(value) for name, value in tree.items()}


def _budget_kwargs(target: BenchmarkTarget, budget: Budget) -> dict:
    base = budget.synthetic if target.exact_sampler is not None else budget.posterior
    return {**base, **budget.overrides.get(target.name, {})}


def _whitening_gradient_evaluations(cds: CDSInference) -> int:
    if cds.whitening_spec != "auto" or cds.init is not None:  # a warm start fits none
        return 0
    config = WhiteningConfig()
    num_starts = cds.target.init_positions.shape[0] * len(config.start_spreads)
    num_draws = config.num_draws
    if cds.target.dim <= config.full_rank_max_dim:
        num_draws = max(num_draws, 2 * cds.target.dim)
    return num_starts * config.num_steps * num_draws


def paper_preset(num_train_steps: int, batch_size: int, num_sde_steps: int) -> dict:
    """``CDSInference`` settings of the SCDS reference code (method.md Part C, item 4).

    No whitening; the prior ``N(0, I)`` truncated at +-3.89 in training and when
    drawing; every step's control sees the target score; the self-consistency
    teacher is the current weights; Adam 5e-3 with weight decay 1e-7 and global-norm
    clip 1, decayed to 0.04 % (the reference's StepLR to 2 % stepped twice per
    iteration); control clips 10 -> 50 -> 250 after 100 and 200 iterations; an EMA
    (cap 0.9999) over the last ``(num_train_steps - 1500) / 2`` iterations draws; the
    last snapshot draws (no monitor selection); raw draws (no correction).  The
    paper's budget is 1e4 x 512 x 128.
    """
    return dict(
        whitening=None,
        correction=None,
        consistency=ConsistencyConfig(
            num_sde_steps=num_sde_steps,
            batch_size=batch_size,
            prior_bound=3.89,
            sampling_prior_bound=3.89,
            clip_milestones=(100, 200),
            target_score_max_step=None,
            teacher="current",
            ema_decay=0.9999,
            ema_start=max(0, (num_train_steps - 1500) // 2),
        ),
        train=TrainConfig(
            num_train_steps=num_train_steps,
            learning_rate=5e-3,
            final_learning_rate_fraction=4e-4,
            weight_decay=1e-7,
        ),
        monitor=MonitorConfig(keep_best=False),
    )


def training_gradient_evaluations(cds: CDSInference) -> int:
    """Target gradients of the training, teacher and whitening fit included.

    Each iteration moves ``B`` paths by ``N`` steps with a target score per step; the
    SCDS self-consistency term adds one score at the teacher's midpoint per path, and
    the pathwise KL of PIS and DDS one backward pass through ``log rho`` at the path's
    end.  With ``save_memory`` the paths are simulated twice (CDDS students excepted).
    A CDDS student trained after its own (DIS or DDS) teacher adds the teacher's.
    """
    config = cds.consistency

    def per_path(method):
        if config.save_memory and method != "cdds":
            # Two simulations; the likelihood-ratio KL gradient needs no backward pass.
            return 2 * config.num_sde_steps + (method == "scds")
        return config.num_sde_steps + (method in ("scds", "pis", "dds"))

    teacher_loss = "kl_loss" if cds.teacher_method == "dds" else "diffusion_loss"
    teacher_iterations = len(cds.training_losses.get(f"teacher_{teacher_loss}", ()))
    return (
        int(cds.training_iterations) * config.batch_size * per_path(cds.method)
        + teacher_iterations * config.batch_size * per_path(cds.teacher_method)
        + _whitening_gradient_evaluations(cds)
    )


def _run_cds(
    target: BenchmarkTarget,
    budget: Budget,
    rng_key,
    options: dict,
    label: str,
    step_counts: tuple[int, ...] | None = None,
) -> tuple[CDSInference, list[MethodRun]]:
    """Train ``CDSInference(**options)``; a ``label(k)`` row per number of steps.

    ``step_counts`` None: the budget's (None there: 1, 2, 4, ..., N).
    """
    train_key, sample_key = jax.random.split(rng_key)
    if budget.checkpoint_dir is not None:
        os.makedirs(budget.checkpoint_dir, exist_ok=True)
        options["checkpoint"] = os.path.join(
            budget.checkpoint_dir, f"{target.name}-{label}.ckpt"
        )
    cds = CDSInference(
        target.model, num_samples=budget.num_draws, progress_bar=False, **options
    )
    cds.warmup(train_key, *target.model_args)
    # From the sampler's own clock, which a checkpoint carries across processes.
    train_seconds = sum(
        cds.timings.get(part, 0.0)
        for part in ("whitening", "teacher_training", "training")
    )
    config = cds.consistency
    training_gradients = training_gradient_evaluations(cds)
    step_counts = (
        step_counts
        or budget.step_counts
        or [2**i for i in range(config.num_sde_steps.bit_length())]
    )
    runs = []
    for num_steps in step_counts:
        draw = lambda k=num_steps: cds.sample(sample_key, budget.num_draws, k)  # noqa: E731
        draw()
        samples, seconds = _timed(draw)
        info = {
            "num_train_steps": cds.train_config.num_train_steps,
            "iterations_done": int(cds.training_iterations),
            "snapshot_iteration": cds.snapshot.iteration,
            "batch_size": config.batch_size,
            "num_sde_steps": config.num_sde_steps,
            "final_loss": float(
                np.median(cds.training_losses[cds.settings.loss_name][-100:])
            ),
        }
        if cds.sampling == "sde" or num_steps <= MAX_WEIGHTED_STEPS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UnreliableDrawsWarning)
                _, log_weights = cds.sample(
                    sample_key, budget.num_draws, num_steps, True
                )
            info["weights"] = summarize_weights(np.asarray(log_weights))._asdict()
            # A folding flow step makes the weights inexact: the tables say so.
            info["unreliable"] = [
                str(w.message)
                for w in caught
                if issubclass(w.category, UnreliableDrawsWarning)
            ]
        runs.append(
            MethodRun(
                method=f"{label}({num_steps})",
                samples=_numpy(samples),
                train_seconds=train_seconds,
                sample_seconds=seconds,
                network_evaluations=num_steps,
                gradient_evaluations=training_gradients
                + (num_steps - 1)
                * budget.num_draws
                * config.uses_target_score(num_steps),
                info=info,
            )
        )
    return cds, runs


def _with_baselines(
    cds: CDSInference, target, budget: Budget, rng_key, runs: list, label: str
) -> list[MethodRun]:
    """``runs`` and the rows to read them against, from the same trained sampler.

    Row ``whitening only`` (the sampler's starting point) and rows ``LABEL(1)+resample``
    and ``LABEL(1)+MCMC``: the 1-step draws with ``correction="resample"`` and
    ``"mcmc"`` (their network evaluations per draw count the resampling pool).
    """
    sample_key = jax.random.split(rng_key)[1]
    runs.append(_whitening_run(cds, budget, sample_key))
    for correction in ("resample", "mcmc"):
        runs.append(
            _corrected_run(cds, target, budget, sample_key, runs[0], correction, label)
        )
    return runs


@register_method("scds")
def run_scds(target: BenchmarkTarget, budget: Budget, rng_key) -> list[MethodRun]:
    """SCDS (``method="scds"``) with the budget's settings.

    A row per number of steps 1, 2, ..., N, and the rows of :func:`_with_baselines`.
    Every row holds its importance-weight summary (log Z, ESS, k-hat).
    """
    options = {**_budget_kwargs(target, budget), "method": "scds"}
    cds, runs = _run_cds(target, budget, rng_key, options, "SCDS")
    return _with_baselines(cds, target, budget, rng_key, runs, "SCDS")


@register_method("scds-paper", default=False)
def run_scds_paper(target: BenchmarkTarget, budget: Budget, rng_key) -> list[MethodRun]:
    """The reference code's protocol (:func:`paper_preset`), rows ``SCDS-paper(k)``.

    Training length, batch and ``N`` come from the budget's settings for the target.
    """
    settings = _budget_kwargs(target, budget)
    options = paper_preset(
        settings["num_train_steps"], settings["batch_size"], settings["num_sde_steps"]
    )
    return _run_cds(target, budget, rng_key, options, "SCDS-paper")[1]


def _run_diffusion_sampler(
    method: str, step_counts: Callable[[int], tuple[int, ...]]
) -> Callable:
    """A benchmark method running ``CDSInference(method=method)``, rows ``METHOD(k)``.

    The budget's settings; ``step_counts(N)`` gives the rows' numbers of steps.
    """

    def run(target: BenchmarkTarget, budget: Budget, rng_key) -> list[MethodRun]:
        options = {**_budget_kwargs(target, budget), "method": method}
        num_sde_steps = options.get("num_sde_steps", ConsistencyConfig().num_sde_steps)
        steps = step_counts(num_sde_steps)
        return _run_cds(target, budget, rng_key, options, method.upper(), steps)[1]

    run.__doc__ = (
        f"{method.upper()} (``method={method!r}``): Euler-Maruyama draws with path "
        "weights, rows at the numbers of steps of ``step_counts``."
    )
    return run


# DIS is trained at step 1 / N only: rows k = N and 1 (the paper's DIS(1) column).
register_method("dis", default=False)(_run_diffusion_sampler("dis", lambda n: (n, 1)))
# PIS and DDS (KL against a reference process): the paper's rows k = N.
register_method("pis", default=False)(_run_diffusion_sampler("pis", lambda n: (n,)))
register_method("dds", default=False)(_run_diffusion_sampler("dds", lambda n: (n,)))


def _run_distillation(teacher_method: str, label: str, baselines: bool) -> Callable:
    """A benchmark method running CDDS after its ``teacher_method`` teacher.

    With ``baselines``, also the rows of :func:`_with_baselines`.
    """

    def run(target: BenchmarkTarget, budget: Budget, rng_key) -> list[MethodRun]:
        options = {**_budget_kwargs(target, budget), "method": "cdds"}
        options["teacher_method"] = teacher_method
        steps = (1, 2, 4, 8, 16)
        cds, runs = _run_cds(target, budget, rng_key, options, label, steps)
        if baselines:
            return _with_baselines(cds, target, budget, rng_key, runs, label)
        return runs

    run.__doc__ = (
        f"CDDS (``method='cdds'``, its {teacher_method.upper()} teacher trained "
        f"first), rows ``{label}(k)``: ``k`` = 1, 2, 4, 8 and 16 consistency steps "
        "(re-noised in between)"
        + (", and the rows of :func:`_with_baselines`" if baselines else "")
        + ".  The budget's settings for the teacher and for the distillation each; "
        "the rows' training time and gradients include the teacher's."
    )
    return run


register_method("cdds", default=False)(_run_distillation("dis", "CDDS", False))
# The library's default sampler, read against its whitening and its corrections.
register_method("cdds-dds", default=False)(_run_distillation("dds", "CDDS-DDS", True))


def _whitening_run(cds: CDSInference, budget: Budget, rng_key) -> MethodRun:
    """The fitted whitening Gaussian alone: the sampler before any training.

    Draws ``N(0, I)`` truncated where the sampler's are, mapped through the
    whitening; their importance weights use the Gaussian's exact density.
    """
    from numpyro_cds.flow import truncated_normal_logdensity

    dim = cds.target.dim
    bound = cds.consistency.drawing_bound(dim)

    @jax.jit
    def draw(key):
        z = jax.random.truncated_normal(key, -bound, bound, (budget.num_draws, dim))
        x = cds.whitening.unwhiten(z)
        log_q = jax.vmap(lambda zi: truncated_normal_logdensity(zi, bound))(z)
        log_q = log_q - cds.whitening.log_det
        return x, jax.vmap(cds.target.logdensity_fn)(x) - log_q

    (x, log_weights), seconds = _timed(lambda: draw(rng_key))
    samples = jax.vmap(cds.target.postprocess_fn)(x)
    return MethodRun(
        method="whitening only",
        samples=_numpy(samples),
        train_seconds=cds.timings["whitening"],
        sample_seconds=seconds,
        network_evaluations=0,
        gradient_evaluations=_whitening_gradient_evaluations(cds),
        info={"weights": summarize_weights(np.asarray(log_weights))._asdict()},
    )


def _corrected_run(
    cds, target, budget, rng_key, one_step: MethodRun, correction: str, label: str
) -> MethodRun:
    """The 1-step draws with ``correction`` ("resample" or "mcmc"), same sampler."""
    cds.correction, cds.num_steps = correction, 1
    cds.run(rng_key, *target.model_args)
    added = cds.correction_info if correction == "mcmc" else {}
    return MethodRun(
        method=f"{label}(1)+" + ("MCMC" if correction == "mcmc" else "resample"),
        samples=_numpy(cds.get_samples()),
        train_seconds=one_step.train_seconds,
        sample_seconds=cds.timings["sampling"],
        network_evaluations=cds.correction_pool,
        # 1-step draws use no target gradient (the score is skipped at t = 0).
        gradient_evaluations=one_step.gradient_evaluations
        + added.get("gradient_evaluations", 0),
        info={**one_step.info, **({"correction": added} if added else {})},
    )


def run_nuts(model, model_args, rng_key, nuts: dict) -> tuple[MCMC, dict]:
    """NumPyro NUTS with default settings; returns the MCMC object and its costs.

    Args:
        model: NumPyro model.
        model_args: its positional arguments.
        rng_key: PRNG key.
        nuts: ``num_warmup``, ``num_samples``, ``num_chains``.

    Returns:
        ``(mcmc, info)`` with seconds (warm-up, sampling), divergences, gradient
        evaluations, the largest R-hat and the smallest bulk ESS over the parameters.
    """
    mcmc = MCMC(NUTS(model), chain_method="sequential", progress_bar=False, **nuts)
    warmup_key, sample_key = jax.random.split(rng_key)
    _, warmup_seconds = _timed(
        lambda: mcmc.warmup(
            warmup_key, *model_args, extra_fields=("num_steps",), collect_warmup=True
        )
    )
    warmup_steps = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    _, sample_seconds = _timed(
        lambda: mcmc.run(
            sample_key, *model_args, extra_fields=("num_steps", "diverging")
        )
    )
    extra = mcmc.get_extra_fields()
    stats = summary(mcmc.get_samples(group_by_chain=True))
    r_hat = [np.max(s["r_hat"]) for s in stats.values()]
    ess = [np.min(s["n_eff"]) for s in stats.values()]
    return mcmc, {
        "warmup_seconds": warmup_seconds,
        "sample_seconds": sample_seconds,
        "divergences": int(np.sum(extra["diverging"])),
        "gradient_evaluations": warmup_steps + int(np.sum(extra["num_steps"])),
        "max_r_hat": float(np.nanmax(r_hat)),
        "min_ess": float(np.nanmin(ess)),
    }


@register_method("nuts")
def run_nuts_method(
    target: BenchmarkTarget, budget: Budget, rng_key
) -> list[MethodRun]:
    """NumPyro NUTS (defaults) with the budget's warm-up, draws and chains."""
    mcmc, info = run_nuts(target.model, target.model_args, rng_key, budget.nuts)
    return [
        MethodRun(
            method="NUTS",
            samples=_numpy(mcmc.get_samples()),
            train_seconds=info.pop("warmup_seconds"),
            sample_seconds=info.pop("sample_seconds"),
            network_evaluations=None,
            gradient_evaluations=info.pop("gradient_evaluations"),
            info=info,
        )
    ]
