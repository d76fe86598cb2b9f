"""The blocked attention (the CPU default) against jax.nn.dot_product_attention's XLA reference:
same outputs and gradients, with and without a key mask, over several blocks of examples."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.blocks import attention


@pytest.mark.parametrize("masked", [False, True])
def test_blocked_attention_equals_xla_reference_in_value_and_gradient(monkeypatch, masked):
    # Blocks of 2 examples: 6 examples make three blocks of the lax.map.
    monkeypatch.setattr(attention, "_BLOCK_BYTES", 2 * 3 * 5 * 7 * 4)
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(6, 5, 3, 4)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(6, 7, 3, 4)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.random((6, 1, 1, 7)) < 0.6) | (jnp.arange(7) == 0) if masked else None
    w = jnp.asarray(rng.normal(size=(6, 5, 3, 4)), jnp.float32)

    def loss(impl):
        return lambda q, k, v: jnp.sum(w * attention.dot_product_attention(q, k, v, mask, impl))

    leaves = lambda impl: jax.tree_util.tree_leaves(  # noqa: E731
        jax.value_and_grad(loss(impl), (0, 1, 2))(q, k, v))
    for ours, ref in zip(leaves("blocked"), leaves("xla")):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-5)
