"""Comparing draws: flat per-parameter views, errors against reference draws, plots.

These helpers work on plain dicts of arrays, so the same code compares CDS draws,
NUTS draws and posteriordb reference draws.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "flatten_samples",
    "standardized_errors",
    "plot_marginals",
    "mode_statistics",
]


def flatten_samples(samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One 1-D array of draws per scalar parameter, named Stan-style (``theta[1]``).

    Args:
        samples: dict of arrays with draws on the leading axis.

    Returns:
        Dict from scalar parameter names (1-based indices in brackets, row-major) to
        arrays of shape ``(num_draws,)``.

    Example:
        >>> import numpy as np
        >>> flat = flatten_samples({"mu": np.zeros(4), "theta": np.zeros((4, 2))})
        >>> sorted(flat)
        ['mu', 'theta[1]', 'theta[2]']
    """
    flat = {}
    for name, value in samples.items():
        value = np.asarray(value)
        if value.ndim == 1:
            flat[name] = value
            continue
        for index in np.ndindex(value.shape[1:]):
            label = ",".join(str(i + 1) for i in index)
            flat[f"{name}[{label}]"] = value[(slice(None), *index)]
    return flat


def standardized_errors(
    samples: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Per-parameter ``(mean - ref mean) / ref sd`` and ``log(sd / ref sd)``.

    Args:
        samples: flat draws (see :func:`flatten_samples`).
        reference: flat reference draws; only their parameters are compared.

    Returns:
        Dict from parameter name to ``(standardised mean error, log sd ratio)``.

    Raises:
        KeyError: a reference parameter is missing from ``samples``.

    Example:
        >>> import numpy as np
        >>> ref = {"x": np.array([-1.0, 1.0])}
        >>> standardized_errors({"x": np.array([0.0, 2.0])}, ref)["x"]
        (1.0, 0.0)
    """
    errors = {}
    for name, ref in reference.items():
        if name not in samples:
            raise KeyError(f"parameter {name!r} of the reference is not in the samples")
        draws = np.asarray(samples[name], float)
        ref = np.asarray(ref, float)
        errors[name] = (
            float((draws.mean() - ref.mean()) / ref.std()),
            float(np.log(draws.std() / ref.std())),
        )
    return errors


def plot_marginals(
    draws_by_method: Mapping[str, Mapping[str, np.ndarray]],
    path: str,
    names: list[str] | None = None,
    max_panels: int = 12,
) -> None:
    """Save histograms of each parameter's marginal, one colour per method.

    Args:
        draws_by_method: method name -> flat draws (see :func:`flatten_samples`).
        path: where to save the PNG.
        names: parameters to show (default: those of the first method).
        max_panels: show at most this many parameters.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(draws_by_method.values()))
    names = list(first) if names is None else names
    names = names[:max_panels]
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows))
    axes = np.atleast_1d(axes).ravel()
    for ax, name in zip(axes, names, strict=False):
        values = [np.asarray(d[name]) for d in draws_by_method.values() if name in d]
        low, high = np.percentile(np.concatenate(values), [0.5, 99.5])
        bins = np.linspace(low, high, 60)
        for method, draws in draws_by_method.items():
            if name in draws:
                ax.hist(
                    draws[name], bins=bins, density=True, histtype="step", label=method
                )
        ax.set_title(name, fontsize=9)
    for ax in axes[len(names) :]:
        ax.axis("off")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mode_statistics(
    draws: np.ndarray,
    means: np.ndarray,
    *,
    radius: float = 3.0,
    min_mass: float = 0.005,
) -> dict[str, float]:
    """Mode coverage of draws from a mixture with known component means.

    Each draw is assigned to its nearest mean.

    Args:
        draws: shape ``(num_draws, dim)``.
        means: component means, shape ``(num_modes, dim)``.
        radius: a draw is "near" its mode within this Euclidean distance.
        min_mass: a mode counts as found if it holds at least this fraction of draws.

    Returns:
        ``modes_found`` (modes with at least ``min_mass``), ``near_fraction``
        (fraction of draws within ``radius`` of their mode), ``max_weight_error``
        (largest ``|mass - 1 / num_modes|``) and ``entropic_coverage``
        (``-sum p log p / log num_modes``).

    Example:
        >>> import numpy as np
        >>> means = np.array([[0.0, 0.0], [10.0, 0.0]])
        >>> draws = np.array([[0.1, 0.0], [9.0, 0.0], [10.0, 5.0], [0.0, 0.2]])
        >>> mode_statistics(draws, means)["near_fraction"]
        0.75
    """
    draws, means = np.asarray(draws, float), np.asarray(means, float)
    # |x - m|^2 = |x|^2 - 2 x.m + |m|^2: memory of (draws, modes), not (.., dim).
    squared = (
        np.sum(draws**2, 1)[:, None] - 2 * draws @ means.T + np.sum(means**2, 1)[None]
    )
    distances = np.sqrt(np.maximum(squared, 0.0))
    nearest = distances.argmin(1)
    mass = np.bincount(nearest, minlength=len(means)) / len(draws)
    positive = mass[mass > 0]
    return {
        "modes_found": int(np.sum(mass >= min_mass)),
        "near_fraction": float(np.mean(distances.min(1) <= radius)),
        "max_weight_error": float(np.max(np.abs(mass - 1 / len(means)))),
        "entropic_coverage": float(
            -np.sum(positive * np.log(positive)) / np.log(len(means))
        ),
    }
