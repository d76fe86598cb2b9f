"""diffjax.xla_options: on CPU, diffjax's programs run convolutions outside YNNPACK (whose
convolutions use one thread) and reductions inside it, compute what XLA's default program
computes, and the trainer and the sampler are compiled with those options."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import _train_helpers as helpers
from diffjax import train, xla_options
from diffjax.training.evaluation import Sampler

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU options")


def _ops_in_ynn_fusions(hlo: str) -> set:
    """The opcodes of the computations that YNNPACK fusions call."""
    called = set(re.findall(r"calls=%([\w.\-]+), [^\n]*__ynn_fusion", hlo))
    bodies = re.split(r"\n(?=%|ENTRY)", hlo)
    ops = set()
    for body in bodies:
        name = re.match(r"%([\w.\-]+) ", body)
        if name and name.group(1) in called:
            ops |= set(re.findall(r"= \S+ (\w[\w-]*)\(", body))
    return ops


def _net(x, w):
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jax.nn.silu(y), axis=(1, 2)), y


def test_cpu_programs_convolve_outside_ynnpack_reduce_inside_and_match_xla_default():
    if xla_options.YNN_OPTION in __import__("os").environ.get("XLA_FLAGS", ""):
        pytest.skip("XLA_FLAGS chooses the YNNPACK fusions itself")
    assert xla_options.compiler_options() == xla_options.CPU_OPTIONS
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 16, 16, 24)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 24, 16)) / 15, jnp.float32)
    ours = xla_options.jit(_net).lower(x, w).compile()
    default = jax.jit(_net).lower(x, w).compile()
    in_ynn = _ops_in_ynn_fusions(ours.as_text())
    assert "convolution" not in in_ynn and "reduce" in in_ynn, in_ynn
    if "convolution" not in _ops_in_ynn_fusions(default.as_text()):
        pytest.fail("XLA's default no longer hands convolutions to YNNPACK: re-measure "
                    "experiments/benchmarks/xla_cpu_options.py before keeping the option")
    for a, b in zip(ours(x, w), default(x, w)):  # two libraries' kernels, one function
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_xla_flags_that_choose_ynnpack_fusions_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_OPTION}=LIBRARY_FUSION_TYPE_REDUCE")
    assert xla_options.compiler_options() == {}


def test_the_train_step_and_the_sampler_are_compiled_with_the_options(tmp_path, monkeypatch):
    """With an option XLA refuses, compiling the trainer's step and the evaluation sampler
    fails on it: both pass :func:`xla_options.compiler_options` to XLA (the sampler's
    program holds ``diffjax.sample``'s own ``jit``, which takes none when nested)."""
    bad = {xla_options.YNN_OPTION: "NOT_A_FUSION_TYPE"}
    monkeypatch.setattr(xla_options, "compiler_options", lambda: dict(bad))
    config = helpers.tiny_config(str(tmp_path), **{"training.num_steps": 2})
    refused = "'NOT_A_FUSION_TYPE' is not a valid enum value"  # XLA's own message
    with pytest.raises(Exception, match=refused):
        train.train(config, str(tmp_path / "run"))
    setup = train.build(config)
    params = train.init_state(setup, 0).ema_params
    sampler = Sampler(setup, config.sampling, 4)
    cond = {"label": jnp.zeros((4,), jnp.int32)}
    with pytest.raises(Exception, match=refused):
        sampler._fn.lower(params, jax.random.PRNGKey(0), cond, None).compile()
