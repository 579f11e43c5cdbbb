"""A small decoder-only transformer in plain JAX, cut into pipeline stages.

The test bed needs real XLA compute whose cost moves with sequence length and layer count, so
that data-dependent and pipeline imbalance are real, not slept. Plain JAX (no flax, no optax)
keeps the training image to jax+numpy and every operation in view.

A stage is a contiguous run of layers; the first stage also holds the token and position
embeddings, the last the final norm, the output head and the loss (with one stage, one stage
holds everything). Parameters come from the seed per *global* layer index, so a split model
starts from exactly the weights of the unsplit one and computes the same loss and gradients.

Per stage three jitted functions drive training: ``forward`` returns the stage's output and
the ``jax.vjp`` function (a pytree, so it crosses the jit boundary and keeps the residuals
until the backward), ``backward`` applies it and adds the parameter gradient to an
accumulator, and ``update`` is Adam over the flat, all-reduced gradient.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

Params = dict[str, Any]

_EMBED_KEY, _POS_KEY, _HEAD_KEY, _LAYER_KEY0 = 0, 1, 2, 1000
_INIT_STD = 0.02
_ADAM_B1, _ADAM_B2, _ADAM_EPS = 0.9, 0.95, 1e-8


@dataclass(frozen=True)
class ModelShape:
    """Everything that fixes the parameter shapes: hashable, so jitted closures can hold it."""

    vocab: int
    d_model: int
    heads: int
    seq_len: int
    stage_layers: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        if not self.stage_layers or min(self.stage_layers) < 1:
            raise ValueError(f"stage_layers {self.stage_layers}: every stage needs at least one layer")

    @property
    def stages(self) -> int:
        return len(self.stage_layers)

    @property
    def layers(self) -> int:
        return sum(self.stage_layers)

    def first_layer(self, stage: int) -> int:
        return sum(self.stage_layers[:stage])

    def is_first(self, stage: int) -> bool:
        return stage == 0

    def is_last(self, stage: int) -> bool:
        return stage == self.stages - 1


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray[Any, Any]:
    return (std * rng.standard_normal(shape)).astype(np.float32)


def _norm_params(d: int) -> Params:
    return {"scale": np.ones((d,), np.float32), "bias": np.zeros((d,), np.float32)}


def _init_layer(rng: np.random.Generator, d: int, layers: int) -> Params:
    out_std = _INIT_STD / math.sqrt(2 * layers)  # residual branches scaled by depth (GPT-2)
    return {
        "ln1": _norm_params(d),
        "w_qkv": _normal(rng, (d, 3 * d), _INIT_STD),
        "w_o": _normal(rng, (d, d), out_std),
        "ln2": _norm_params(d),
        "w_up": _normal(rng, (d, 4 * d), _INIT_STD),
        "b_up": np.zeros((4 * d,), np.float32),
        "w_down": _normal(rng, (4 * d, d), out_std),
        "b_down": np.zeros((d,), np.float32),
    }


def init_stage(shape: ModelShape, stage: int, seed: int) -> Params:
    """The parameters of one stage (host arrays), drawn per global layer index from ``seed``.

    numpy's generator, not jax.random: drawing on the host costs no XLA compilations at start-up.
    """
    d = shape.d_model
    start = shape.first_layer(stage)
    params: Params = {
        "layers": [
            _init_layer(np.random.default_rng([seed, _LAYER_KEY0 + i]), d, shape.layers)
            for i in range(start, start + shape.stage_layers[stage])
        ]
    }
    if shape.is_first(stage):
        params["embed"] = _normal(np.random.default_rng([seed, _EMBED_KEY]), (shape.vocab, d), _INIT_STD)
        params["pos"] = _normal(np.random.default_rng([seed, _POS_KEY]), (shape.seq_len, d), _INIT_STD)
    if shape.is_last(stage):
        params["ln_f"] = _norm_params(d)
        params["head"] = _normal(np.random.default_rng([seed, _HEAD_KEY]), (d, shape.vocab), _INIT_STD)
    return params


def param_count(shape: ModelShape, stage: int) -> int:
    """Parameters of one stage."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(init_stage(shape, stage, 0)))


def _layer_norm(p: Params, x: jax.Array) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: jax.Array = (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]
    return out


def _attention(p: Params, x: jax.Array, heads: int) -> jax.Array:
    batch, length, d = x.shape
    q, k, v = jnp.split(x @ p["w_qkv"], 3, axis=-1)
    q, k, v = (t.reshape(batch, length, heads, d // heads) for t in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
    causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
    scores = jnp.where(causal, scores, -1e30)
    mixed = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    out: jax.Array = mixed.reshape(batch, length, d) @ p["w_o"]
    return out


def _block(p: Params, x: jax.Array, heads: int) -> jax.Array:
    x = x + _attention(p, _layer_norm(p["ln1"], x), heads)
    hidden = jax.nn.gelu(_layer_norm(p["ln2"], x) @ p["w_up"] + p["b_up"])
    out: jax.Array = x + hidden @ p["w_down"] + p["b_down"]
    return out


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over every position of every sequence."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    # A one-hot product, not take_along_axis: the gather's scatter-add transpose is several
    # times slower on CPU than this elementwise form over the same logits.
    picked = (logp * jax.nn.one_hot(targets, logits.shape[-1], dtype=logp.dtype)).sum(-1)
    loss: jax.Array = -picked.mean()
    return loss


def apply_stage(shape: ModelShape, stage: int, params: Params, inputs: jax.Array, targets: Any) -> jax.Array:
    """One stage: tokens or activations in, activations or the loss out."""
    x: jax.Array
    if shape.is_first(stage):
        length = inputs.shape[1]
        x = params["embed"][inputs] + params["pos"][:length]
    else:
        x = inputs
    for layer in params["layers"]:
        x = _block(layer, x, shape.heads)
    if not shape.is_last(stage):
        return x
    logits = _layer_norm(params["ln_f"], x) @ params["head"]
    return cross_entropy(logits, targets)


def full_loss(shape: ModelShape, params: list[Params], tokens: jax.Array, targets: jax.Array) -> jax.Array:
    """The unsplit model: every stage in a row (the reference the pipeline must match)."""
    x: Any = tokens
    for stage, stage_params in enumerate(params):
        x = apply_stage(shape, stage, stage_params, x, targets)
    out: jax.Array = x
    return out


@dataclass
class AdamState:
    """Adam's moments over the stage's flat parameter vector, and its step count."""

    m: jax.Array
    v: jax.Array
    t: jax.Array

    @classmethod
    def zeros(cls, size: int) -> AdamState:
        return cls(jnp.zeros((size,), jnp.float32), jnp.zeros((size,), jnp.float32), jnp.zeros((), jnp.int32))


class StageProgram:
    """The jitted forward, backward, flatten and update of one pipeline stage."""

    def __init__(self, shape: ModelShape, stage: int, *, padded_size: int, lr: float, dp: int) -> None:
        self.shape, self.stage = shape, stage
        self.differentiate_inputs = not shape.is_first(stage)
        self.size = param_count(shape, stage)
        if padded_size < self.size:
            raise ValueError(f"padded size {padded_size} is below stage {stage}'s {self.size} parameters")
        self.padded_size = padded_size
        self.forward: Callable[..., tuple[jax.Array, Any]] = jax.jit(self._forward)
        self.backward: Callable[..., tuple[Params, Any]] = jax.jit(self._backward, donate_argnums=(2,))
        self._zeros: Callable[[Params], Params] = jax.jit(lambda p: jax.tree.map(jnp.zeros_like, p))
        self.flatten: Callable[[Params], jax.Array] = jax.jit(self._flatten)
        self.update: Callable[..., tuple[Params, AdamState]] = jax.jit(
            functools.partial(self._update, lr=lr, dp=dp), donate_argnums=(0, 1)
        )

    def _forward(self, params: Params, inputs: jax.Array, targets: Any) -> tuple[jax.Array, Any]:
        if self.differentiate_inputs:
            return jax.vjp(lambda p, x: apply_stage(self.shape, self.stage, p, x, targets), params, inputs)
        return jax.vjp(lambda p: apply_stage(self.shape, self.stage, p, inputs, targets), params)

    def _backward(self, vjp_fn: Any, cotangent: jax.Array, grads: Params) -> tuple[Params, Any]:
        """(gradient accumulator plus this micro-batch's, gradient of the stage's input or None)."""
        cotangents = vjp_fn(cotangent)
        total = jax.tree.map(jnp.add, grads, cotangents[0])
        return total, (cotangents[1] if self.differentiate_inputs else None)

    def zero_grads(self, params: Params) -> Params:
        """A zero gradient accumulator beside ``params``. Placed explicitly: jit leaves outputs
        that do not depend on an input uncommitted, and the backward would compile twice (for
        the first micro-batch's uncommitted accumulator, then for the committed ones after)."""
        leaf = jax.tree.leaves(params)[0]
        where = leaf.sharding if isinstance(leaf, jax.Array) else jax.local_devices()[0]
        zeros: Params = jax.device_put(self._zeros(params), where)
        return zeros

    def _flatten(self, grads: Params) -> jax.Array:
        flat, _ = ravel_pytree(grads)
        return jnp.pad(flat, (0, self.padded_size - self.size))

    def _update(
        self, params: Params, state: AdamState, summed: jax.Array, *, lr: float, dp: int
    ) -> tuple[Params, AdamState]:
        """Adam on the mean gradient (``summed`` is the all-reduce's sum over the dp ranks)."""
        flat, unravel = ravel_pytree(params)
        grad = summed.reshape(-1)[: self.size] / dp
        t = state.t + 1
        m = _ADAM_B1 * state.m + (1 - _ADAM_B1) * grad
        v = _ADAM_B2 * state.v + (1 - _ADAM_B2) * grad * grad
        m_hat = m / (1 - _ADAM_B1 ** t.astype(jnp.float32))
        v_hat = v / (1 - _ADAM_B2 ** t.astype(jnp.float32))
        flat = flat - lr * m_hat / (jnp.sqrt(v_hat) + _ADAM_EPS)
        new_params: Params = unravel(flat)
        return new_params, AdamState(m, v, t)


jax.tree_util.register_dataclass(AdamState, data_fields=["m", "v", "t"], meta_fields=[])


def wait(tree: Any) -> None:
    """Block until every array in ``tree`` is computed (JAX dispatch returns before the work)."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            leaf.block_until_ready()


def flat_numpy(tree: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A pytree of float32 arrays as one host vector (checkpoints, tests)."""
    flat, _ = ravel_pytree(tree)
    return np.asarray(flat, dtype=np.float32)
