"""The blocked attention (the CPU default) against jax.nn.dot_product_attention's XLA reference:
same outputs, gradients and forward-mode derivatives, with and without a key mask, over several
blocks of examples, with fewer keys than the head width and more (the two arithmetic orders of
``attention._attend``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.blocks import attention


@pytest.mark.parametrize("keys", [7, 3])   # head width 4: more keys than it, and fewer
@pytest.mark.parametrize("masked", [False, True])
def test_blocked_attention_equals_xla_reference_in_value_and_gradient(monkeypatch, masked, keys):
    # Blocks of 2 examples: 6 examples make three blocks of the lax.map.
    monkeypatch.setattr(attention, "_BLOCK_BYTES", 2 * 3 * 5 * keys * 4)
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(6, 5, 3, 4)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(6, keys, 3, 4)), jnp.float32) for _ in range(2))
    mask = (jnp.asarray(rng.random((6, 1, 1, keys)) < 0.6) | (jnp.arange(keys) == 0)
            if masked else None)
    w = jnp.asarray(rng.normal(size=(6, 5, 3, 4)), jnp.float32)

    def loss(impl):
        return lambda q, k, v: jnp.sum(w * attention.dot_product_attention(q, k, v, mask, impl))

    leaves = lambda impl: jax.tree_util.tree_leaves(  # noqa: E731
        jax.value_and_grad(loss(impl), (0, 1, 2))(q, k, v))
    for ours, ref in zip(leaves("blocked"), leaves("xla")):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)
    # Forward mode (MeanFlow's and the likelihood's jax.jvp through the network).
    tangents = tuple(jnp.asarray(rng.normal(size=a.shape), jnp.float32) for a in (q, k, v))
    jvp = lambda impl: jax.jvp(  # noqa: E731
        lambda q, k, v: attention.dot_product_attention(q, k, v, mask, impl), (q, k, v), tangents)
    for ours, ref in zip(jvp("blocked"), jvp("xla")):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)
