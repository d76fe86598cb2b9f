"""The condition pytree: what a model is conditioned on, from data to network to sampler.

A condition is a dict of arrays whose leading axis is the batch (DESIGN §6):

=============  ==================  =========================================================
key            shape / dtype       null value (dropout in training, the "u" of guidance)
=============  ==================  =========================================================
label          [B] int32           ``num_classes`` (a learned "no class" label)
text           [B, L] int32        the empty prompt's token ids (``Nulls.text``)
text_mask      [B, L] bool/int     the empty prompt's mask (``Nulls.text_mask``)
context        [B, L, D] float     the empty prompt's embeddings (``Nulls.context``)
context_mask   [B, L] bool/int     the empty prompt's mask (``Nulls.context_mask``)
control        [B, H, W, C] float  zeros
=============  ==================  =========================================================

An absent key is an absent condition; ``{}`` (or None) is an unconditional model's condition.
A companion key (``text_mask``, ``context_mask``) is nulled and dropped together with its
``text`` / ``context``. Classifier-free guidance (Ho & Salimans 2022) trains with some conditions
replaced by their null values and mixes the conditional and null predictions at sampling time;
both use :class:`Nulls`, so the two can never disagree.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Cond = dict[str, Array]

KINDS = ("label", "text", "context", "control")
COMPANIONS = {"text": "text_mask", "context": "context_mask"}
KEYS = KINDS + tuple(COMPANIONS.values())


def check(cond: Optional[Mapping[str, Any]], batch: Optional[int] = None) -> Cond:
    """``cond`` as a plain dict, its keys and batch axis checked (raises ValueError)."""
    cond = dict(cond or {})
    unknown = sorted(set(cond) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown condition key(s) {unknown}; valid keys: {', '.join(KEYS)}")
    for kind, companion in COMPANIONS.items():
        if companion in cond and kind not in cond:
            raise ValueError(f"condition {companion!r} was given without {kind!r}")
    if batch is not None:
        for key, value in cond.items():
            if tuple(jnp.shape(value))[:1] != (batch,):
                raise ValueError(f"condition {key!r} must have leading (batch) axis {batch}, got "
                                 f"shape {tuple(jnp.shape(value))}")
    return cond


def from_label(label: Optional[Array]) -> Cond:
    """The ``label=`` shorthand: ``{"label": label}``, or ``{}`` for None."""
    return {} if label is None else {"label": jnp.asarray(label, jnp.int32)}


@dataclasses.dataclass(frozen=True)
class Nulls:
    """The null value of each condition kind of one model.

    Attributes:
      num_classes: the null label (``label == num_classes`` means "no class").
      text, text_mask: ``[L]`` token ids and mask of the empty prompt.
      context, context_mask: ``[L, D]`` embeddings and ``[L]`` mask of the empty prompt.
    Control's null is zeros and needs nothing stored.
    """

    num_classes: Optional[int] = None
    text: Optional[Any] = None
    text_mask: Optional[Any] = None
    context: Optional[Any] = None
    context_mask: Optional[Any] = None

    def value(self, key: str, like: Array) -> Array:
        """The null of condition ``key`` shaped and typed like ``like`` (``[B, ...]``)."""
        if key == "control":
            return jnp.zeros_like(like)
        if key == "label":
            if self.num_classes is None:
                raise ValueError("a null label needs Nulls.num_classes (the null class index)")
            return jnp.full_like(like, self.num_classes)
        stored = getattr(self, key)
        if stored is None:
            raise ValueError(f"no null value for condition {key!r}: set Nulls.{key} (the empty "
                             "prompt's value)")
        stored = jnp.asarray(np.asarray(stored), like.dtype)
        return jnp.broadcast_to(stored, like.shape)

    def null(self, cond: Mapping[str, Array]) -> Cond:
        """Every condition of ``cond`` replaced by its null value."""
        return {key: self.value(key, value) for key, value in cond.items()}

    def drop(self, cond: Mapping[str, Array], key: Array,
             rate: Union[float, Mapping[str, float]]) -> Cond:
        """Replaces conditions by their nulls at random, per example (see :func:`drop_masks`)."""
        cond = dict(cond)
        if not cond:
            return cond
        batch = jnp.shape(next(iter(cond.values())))[0]
        return self.apply_masks(cond, drop_masks(tuple(cond), key, batch, rate))

    def apply_masks(self, cond: Mapping[str, Array], masks: Mapping[str, Array]) -> Cond:
        """``cond`` with each kind's rows where ``masks[kind]`` ([B] bool) is set nulled; a
        kind's companion key follows it."""
        cond = dict(cond)
        for key, value in cond.items():
            kind = _kind_of(key)
            if kind in masks:
                mask = masks[kind].reshape((-1,) + (1,) * (jnp.ndim(value) - 1))
                cond[key] = jnp.where(mask, self.value(key, value), value)
        return cond


def _kind_of(key: str) -> str:
    return next((kind for kind, companion in COMPANIONS.items() if companion == key), key)


def drop_masks(keys: tuple, key: Array, batch: int,
               rate: Union[float, Mapping[str, float]]) -> dict[str, Array]:
    """Which examples lose which condition kind: ``{kind: [batch] bool}`` for the kinds in ``keys``.

    ``rate``: one probability for all kinds together (one draw per example drops every
    condition of it), or a mapping ``kind -> probability`` with independent draws per kind
    (e.g. ControlNet's text and control dropout). Draws depend only on ``key``, ``batch`` and
    the kind, so a slice of a global batch's masks is that slice's masks.
    """
    kinds = [kind for kind in KINDS if kind in {_kind_of(k) for k in keys}]
    if isinstance(rate, Mapping):
        unknown = sorted(set(rate) - set(KINDS))
        if unknown:
            raise ValueError(f"dropout rate for unknown condition kind(s) {unknown}; valid "
                             f"kinds: {', '.join(KINDS)}")
        return {kind: jax.random.bernoulli(jax.random.fold_in(key, KINDS.index(kind)),
                                           rate.get(kind, 0.0), (batch,)) for kind in kinds}
    shared = jax.random.bernoulli(key, rate, (batch,))
    return {kind: shared for kind in kinds}


def concat(a: Mapping[str, Array], b: Mapping[str, Array]) -> Cond:
    """Two conditions of the same keys stacked along the batch (guidance's one batched call)."""
    if set(a) != set(b):
        raise ValueError(f"conditions to stack have different keys: {sorted(a)} vs {sorted(b)}")
    return {k: jnp.concatenate([a[k], b[k]]) for k in a}


__all__ = ["COMPANIONS", "Cond", "KEYS", "KINDS", "Nulls", "check", "concat", "drop_masks",
           "from_label"]
