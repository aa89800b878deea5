"""Equinox networks: Fourier time embeddings and the step-size-conditioned control.

The control network follows the FourierMLP of the SCDS/DIS reference design: the state
is embedded by a linear layer, Fourier embeddings of the time ``t`` and of the step size
``d`` are added, two GELU hidden layers follow, and a zero-initialised output layer
makes the learned part of the control exactly zero at initialisation (with
``state_scale``, a second zero-initialised output layer multiplies the state itself,
so that the output can rescale coordinates by functions of the others).  A separate
scalar time embedding (last weight 0) is the gate on the target score's term; how that
term enters the control is the network's ``score_form`` (see
:func:`numpyro_cds.diffusion.control`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["SCORE_FORMS", "TimeEmbedding", "ControlNetwork"]

#: How the gated target score enters the control: ``"langevin"`` (DIS and SCDS: the
#: interpolation ``(1 - t)(-x) + t grad log rho``) or ``"gated"`` (PIS and DDS: the
#: target score itself, on top of the reference process's drift).
SCORE_FORMS = ("langevin", "gated")


def _zero_last_layer(layer: eqx.nn.Linear, bias: float) -> eqx.nn.Linear:
    layer = eqx.tree_at(lambda lin: lin.weight, layer, jnp.zeros_like(layer.weight))
    return eqx.tree_at(lambda lin: lin.bias, layer, jnp.full_like(layer.bias, bias))


class TimeEmbedding(eqx.Module):
    """Fourier features ``sin/cos(k t + phase)`` of a scalar followed by a GELU MLP.

    The frequencies ``k = linspace(0.1, 100, num_frequencies)`` are fixed; the phase is
    learned (initialised standard normal).

    Args:
        out_size: output dimension.
        num_layers: number of linear layers (at least 2).
        width: hidden width.
        num_frequencies: number of Fourier frequencies.
        last_bias: if given, the last layer starts with zero weights and this bias.
        key: PRNG key for the initialisation.

    Example:
        >>> import jax
        >>> embedding = TimeEmbedding(8, 2, key=jax.random.key(0))
        >>> embedding(0.5).shape
        (8,)
    """

    frequencies: Float[Array, " num_frequencies"]
    phase: Float[Array, " num_frequencies"]
    layers: tuple[eqx.nn.Linear, ...]

    def __init__(
        self,
        out_size: int,
        num_layers: int,
        *,
        width: int = 64,
        num_frequencies: int = 64,
        last_bias: float | None = None,
        key: PRNGKeyArray,
    ):
        if num_layers < 2:
            raise ValueError(f"TimeEmbedding needs num_layers >= 2, got {num_layers}.")
        phase_key, *layer_keys = jax.random.split(key, num_layers + 1)
        self.frequencies = jnp.linspace(0.1, 100.0, num_frequencies)
        self.phase = jax.random.normal(phase_key, (num_frequencies,))
        sizes = [2 * num_frequencies] + [width] * (num_layers - 1) + [out_size]
        layers = [
            eqx.nn.Linear(n_in, n_out, key=k)
            for n_in, n_out, k in zip(sizes[:-1], sizes[1:], layer_keys, strict=True)
        ]
        if last_bias is not None:
            layers[-1] = _zero_last_layer(layers[-1], last_bias)
        self.layers = tuple(layers)

    def __call__(self, t: Float[Array, ""]) -> Float[Array, " out_size"]:
        """Embed the scalar ``t``."""
        angle = jax.lax.stop_gradient(self.frequencies) * t + self.phase
        h = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)])
        for layer in self.layers[:-1]:
            h = jax.nn.gelu(layer(h))
        return self.layers[-1](h)


class ControlNetwork(eqx.Module):
    """Step-size-conditioned network ``NN(x, t, d)`` and Langevin gate ``s(t)``.

    The network acts on one state ``x`` of shape ``(dim,)``; batch with ``jax.vmap``.
    Conditioning on ``(t, d)`` is split out (:meth:`conditioning`) so that a batch of
    states sharing one time and step size computes it once.

    Args:
        dim: dimension of the state.
        width: hidden width.
        depth: number of hidden layers.
        gate_bias: initial value of the gate ``s(t)`` (1 for the Langevin gate of
            DIS and SCDS; PIS and DDS start their score gate at 0.01).
        score_form: one of :data:`SCORE_FORMS`.
        state_scale: add ``s(x, t, d) * x`` to the output, ``s`` a second output
            layer on the last hidden features (zero at initialisation).
        key: PRNG key for the initialisation.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = ControlNetwork(3, key=jax.random.key(0))
        >>> output, gate = net(jnp.ones(3), 0.0, 1.0)
        >>> output.tolist(), float(gate)
        ([0.0, 0.0, 0.0], 1.0)
    """

    input_layer: eqx.nn.Linear
    time_embedding: TimeEmbedding
    step_embedding: TimeEmbedding
    hidden_layers: tuple[eqx.nn.Linear, ...]
    output_layer: eqx.nn.Linear
    scale_layer: eqx.nn.Linear | None
    gate: TimeEmbedding
    score_form: str = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        width: int = 64,
        depth: int = 2,
        gate_bias: float = 1.0,
        score_form: str = "langevin",
        state_scale: bool = False,
        key: PRNGKeyArray,
    ):
        if score_form not in SCORE_FORMS:
            raise ValueError(
                f"score_form must be one of {SCORE_FORMS}; got {score_form!r}."
            )
        self.score_form = score_form
        keys = jax.random.split(key, depth + 5)
        self.input_layer = eqx.nn.Linear(dim, width, key=keys[0])
        self.time_embedding = TimeEmbedding(width, 2, width=width, key=keys[1])
        self.step_embedding = TimeEmbedding(width, 2, width=width, key=keys[2])
        self.gate = TimeEmbedding(
            "scalar", 4, width=width, last_bias=gate_bias, key=keys[3]
        )
        self.output_layer = _zero_last_layer(
            eqx.nn.Linear(width, dim, key=keys[4]), 0.0
        )
        self.hidden_layers = tuple(eqx.nn.Linear(width, width, key=k) for k in keys[5:])
        # Zero at the start (any key), like the output layer.
        self.scale_layer = (
            _zero_last_layer(
                eqx.nn.Linear(width, dim, key=jax.random.fold_in(key, depth + 5)), 0.0
            )
            if state_scale
            else None
        )

    def conditioning(
        self, t: Float[Array, ""], d: Float[Array, ""]
    ) -> tuple[Float[Array, " width"], Float[Array, ""]]:
        """Embedding of ``(t, d)`` added to the state features; the gate ``s(t)``."""
        return self.time_embedding(t) + self.step_embedding(d), self.gate(t)

    def output(
        self, x: Float[Array, " dim"], embedding: Float[Array, " width"]
    ) -> Float[Array, " dim"]:
        """Network output at state ``x`` given the conditioning embedding."""
        h = self.input_layer(x) + embedding
        for layer in self.hidden_layers:
            h = layer(jax.nn.gelu(h))
        h = jax.nn.gelu(h)
        if self.scale_layer is None:
            return self.output_layer(h)
        return self.output_layer(h) + self.scale_layer(h) * x

    def __call__(self, x, t, d):
        """Network output and gate at ``(x, t, d)``."""
        embedding, gate = self.conditioning(t, d)
        return self.output(x, embedding), gate
