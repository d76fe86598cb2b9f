"""Tests of diffjax.models: shapes, conditioning, equivariance, precision, gradient flow, configs.

Networks are tiny and compiled functions are shared through module-scoped fixtures so the file
runs in well under a minute on a 2-core CPU.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from diffjax import models
from diffjax.models import blocks

NUM_CLASSES = 3
BATCH = 4


def key(seed):
    # XLA's own RNG compiles in a fraction of threefry's time; the models do not care which.
    return jax.random.key(seed, impl="unsafe_rbg")


def _perturb(params, seed=3, scale=0.05):
    """Moves every parameter (zero-initialised ones included) to a generic non-zero point.

    Host-side numpy: a jitted draw per leaf would cost seconds of XLA compilation.
    """
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda p: p + scale * rng.standard_normal(p.shape).astype(p.dtype), params)


class Net:
    """A module, its variables (at init and perturbed) and its jitted forward and loss-gradient.

    These two compiled functions serve every test of the module: XLA compiles a U-Net's gradient
    slowly on CPU.
    """

    def __init__(self, module, x_shape):
        self.module = module
        rng = np.random.default_rng(1)
        self.x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
        self.t = jnp.linspace(0.05, 0.95, x_shape[0])
        self.target = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
        self.variables = jax.jit(module.init)(key(0), self.x, self.t)
        self.perturbed = {"params": _perturb(self.variables["params"])}
        self.apply = jax.jit(self._apply)
        self.loss_and_grad = jax.jit(jax.value_and_grad(self._train_loss))

    def _apply(self, variables, x, t, label, rng):
        return self.module.apply(variables, x, t, _cond(label), train=False, rngs={"dropout": rng})

    def _train_loss(self, params, label, rng):
        """Mean squared error to a fixed random target, with dropout active."""
        out = self.module.apply({"params": params}, self.x, self.t, _cond(label), train=True,
                                rngs={"dropout": rng})
        return jnp.mean((out - self.target) ** 2)


def _cond(label):
    return None if label is None else {"label": label}


@pytest.fixture(scope="module")
def unet():
    """8x8x1 digits-sized DDPM++ U-Net (the default options) with attention at 4x4, labels."""
    module = models.UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                         num_heads=2, dropout=0.2, num_classes=NUM_CLASSES)
    return Net(module, (BATCH, 8, 8, 1))


@pytest.fixture(scope="module")
def mlp():
    module = models.MLP(hidden=32, depth=2, dropout=0.2, num_classes=NUM_CLASSES)
    return Net(module, (BATCH, 2))


@pytest.fixture(params=["unet", "mlp"])
def net(request, unet, mlp):
    return {"unet": unet, "mlp": mlp}[request.param]


def _labels(batch=BATCH):
    return jnp.arange(batch, dtype=jnp.int32) % (NUM_CLASSES + 1)


# --- shapes and initialisation -------------------------------------------------------------------

def test_output_has_input_shape_and_is_exactly_zero_at_init(net):
    out = net.apply(net.variables, net.x, net.t, _labels(), key(0))
    assert out.shape == net.x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # zero-initialised output layer


def test_unet_on_28x28_with_three_levels_keeps_shape():
    # 28 -> 14 -> 7: the deepest level count that divides 28. DDPM++ defaults otherwise
    # (additive embedding, strided-conv resampling) and the Fourier embedding. Traced only:
    # shapes do not need a compile.
    module = models.UNet(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,),
                         embedding="fourier")
    x, t = jnp.ones((2, 28, 28, 1)), jnp.array([0.1, 0.7])
    out = jax.eval_shape(lambda rng: module.apply(module.init(rng, x, t), x, t), key(0))
    assert out.shape == x.shape and out.dtype == jnp.float32


# --- conditioning --------------------------------------------------------------------------------

def _conditioning_batch(x):
    """Four rows of the same input: (t, label) = (0.2, 0), (0.8, 0), (0.2, 1), (0.2, null)."""
    x = jnp.broadcast_to(x[:1], (4,) + x.shape[1:])
    return x, jnp.array([0.2, 0.8, 0.2, 0.2]), jnp.array([0, 0, 1, NUM_CLASSES], jnp.int32)


def _assert_conditioning_used(out):
    out = np.asarray(out)
    diff = lambda i, j: np.abs(out[i] - out[j]).max()  # noqa: E731
    assert diff(0, 1) > 1e-4, "noise_cond is ignored"
    assert diff(0, 2) > 1e-4, "label is ignored"
    assert diff(0, 3) > 1e-4 and diff(2, 3) > 1e-4, "null label equals a class label"


def test_output_depends_on_noise_cond_and_label(net):
    _assert_conditioning_used(net.apply(net.perturbed, *_conditioning_batch(net.x), key(0)))


def test_adm_unet_depends_on_noise_cond_and_label():
    # Adaptive GroupNorm and residual resampling blocks, at random parameters (traced init only:
    # a second compiled init would cost seconds).
    module = models.UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                         scale_shift=True, resblock_updown=True, num_classes=NUM_CLASSES)
    x, t, label = _conditioning_batch(jnp.ones((1, 8, 8, 1)))
    shapes = jax.eval_shape(module.init, key(0), x, t, {"label": label})
    params = _perturb(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                      scale=0.3)
    out = jax.jit(module.apply)(params, x, t, {"label": label})
    assert out.shape == x.shape
    _assert_conditioning_used(out)


def test_missing_label_means_null_label(mlp):
    null = jnp.full((BATCH,), NUM_CLASSES, jnp.int32)
    np.testing.assert_array_equal(
        mlp.module.apply(mlp.perturbed, mlp.x, mlp.t),
        mlp.module.apply(mlp.perturbed, mlp.x, mlp.t, {"label": null}))


def test_dropout_acts_only_in_training(net):
    label = _labels()
    np.testing.assert_array_equal(net.apply(net.perturbed, net.x, net.t, label, key(1)),
                                  net.apply(net.perturbed, net.x, net.t, label, key(2)))
    out = net.apply(net.perturbed, net.x, net.t, label, key(1))
    eval_loss = float(jnp.mean((out - net.target) ** 2))
    train_loss = [float(net.loss_and_grad(net.perturbed["params"], label, key(s))[0])
                  for s in (1, 2)]
    assert abs(train_loss[0] - train_loss[1]) > 1e-6, "dropout mask ignores the rng"
    assert abs(train_loss[0] - eval_loss) > 1e-6, "train=True has no dropout"


def test_embedding_scale_is_the_only_rescaling_of_noise_cond():
    # The embedding with scale s at input t is the embedding with scale 1 at input s*t.
    t = jnp.array([0.0, 0.3, 1.0])
    for embedding, s in [("sinusoidal", 1000.0), ("fourier", 16.0)]:
        scaled = blocks.NoiseEmbedding(16, embedding, embedding_scale=s)
        unit = blocks.NoiseEmbedding(16, embedding, embedding_scale=1.0)
        variables = scaled.init(key(0), t, None)
        np.testing.assert_allclose(scaled.apply(variables, t, None),
                                   unit.apply(variables, s * t, None), rtol=1e-4, atol=1e-5)


def test_sinusoidal_embedding_matches_its_definition():
    x = jnp.array([0.0, 0.25, 1.0])
    emb = blocks.sinusoidal_embedding(x, 8, scale=2.0, max_period=100.0)
    # frequencies 100^(-k/3), k = 0..3: 1, 100^(-1/3), 100^(-2/3), 1/100
    freqs = np.array([1.0, 100.0 ** (-1 / 3), 100.0 ** (-2 / 3), 0.01])
    args = 2.0 * np.asarray(x)[:, None] * freqs
    np.testing.assert_allclose(emb, np.concatenate([np.sin(args), np.cos(args)], 1), atol=1e-6)


def test_fourier_frequencies_are_fixed_and_not_parameters():
    t = jnp.array([0.1, 0.5])
    count = lambda emb: models.count_params(jax.eval_shape(  # noqa: E731
        blocks.NoiseEmbedding(16, emb).init, key(0), t, None))
    assert count("fourier") == count("sinusoidal")


def test_fourier_features_are_sinusoids_of_fixed_normal_frequencies_times_scale():
    # Read the frequencies back from the features: at small inputs the phase
    # 2 pi w scale t is inside (-pi, pi), so atan2(sin, cos) / (2 pi scale t) recovers w.
    dim, scale = 8192, 3.0
    t = jnp.array([1e-3, 2e-3, 0.5])
    emb = np.asarray(blocks.fourier_embedding(t, dim, scale), np.float64)
    sin, cos = emb[:, :dim // 2], emb[:, dim // 2:]
    np.testing.assert_allclose(sin ** 2 + cos ** 2, 1.0, atol=1e-5)
    w = np.arctan2(sin[:2], cos[:2]) / (2 * np.pi * scale * np.asarray(t[:2])[:, None])
    # The same frequencies at every input: the features are sinusoids of one linear map of t.
    np.testing.assert_allclose(w[0], w[1], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(sin[2], np.sin(2 * np.pi * scale * 0.5 * w[0]), atol=3e-2)
    # ... drawn from N(0, 1): mean and std within 4 standard errors, Kolmogorov-Smirnov.
    n = w.shape[1]
    assert abs(w[0].mean()) < 4 / np.sqrt(n)
    assert abs(w[0].std() - 1) < 4 / np.sqrt(2 * n)
    assert scipy.stats.kstest(w[0], "norm").pvalue > 1e-3


# --- symmetry and precision ----------------------------------------------------------------------

def test_unet_with_attention_is_equivariant_to_batch_permutation(unet):
    perm = jnp.array([2, 0, 3, 1])
    label = _labels()
    out = unet.apply(unet.perturbed, unet.x, unet.t, label, key(0))
    out_perm = unet.apply(unet.perturbed, unet.x[perm], unet.t[perm], label[perm], key(0))
    np.testing.assert_allclose(out_perm, out[perm], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_returns_float32_close_to_float32(unet):
    bf16 = unet.module.clone(dtype=jnp.bfloat16)
    label = _labels()
    out16 = jax.jit(bf16.apply)(unet.perturbed, unet.x, unet.t, {"label": label})
    out32 = unet.apply(unet.perturbed, unet.x, unet.t, label, key(0))
    assert out16.dtype == jnp.float32
    # bf16 keeps 8 mantissa bits (relative error ~4e-3 per op); a few percent overall.
    rel = jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32)
    assert rel < 0.05, rel


# --- gradients -----------------------------------------------------------------------------------

def test_every_parameter_gets_a_gradient(net):
    _, grads = net.loss_and_grad(net.perturbed["params"], _labels(), key(4))
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
    assert not dead, f"no gradient reaches {dead}"


def test_adam_steps_from_init_reduce_a_regression_loss(net):
    label = _labels()
    params = net.variables["params"]
    opt = optax.adam(3e-3)

    @jax.jit
    def update(grads, state, params):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    losses = []
    for step in range(30):
        loss, grads = net.loss_and_grad(params, label, key(100 + step))
        params, state = update(grads, state, params)
        losses.append(float(loss))
    # At init the output is 0, so the loss is exactly mean(target^2).
    np.testing.assert_allclose(losses[0], float(jnp.mean(net.target ** 2)), rtol=1e-6)
    assert losses[-1] < 0.7 * losses[0], losses


# --- helpers -------------------------------------------------------------------------------------

def test_count_params_counts_a_dense_layer():
    variables = nn.Dense(3).init(key(0), jnp.ones((1, 2)))
    assert models.count_params(variables) == 2 * 3 + 3


@pytest.mark.parametrize("channels,groups", [(1, 1), (3, 1), (8, 2), (32, 8), (96, 24),
                                             (128, 32), (512, 32)])
def test_group_norm_groups_divide_channels(channels, groups):
    assert blocks.num_groups(channels) == groups


# --- configs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,shape", [(models.default_unet_config, (8, 8, 1)),
                                        (models.default_mlp_config, (2,))])
def test_default_configs_build_small_networks(make, shape):
    cfg = make()
    cfg.class_conditional = True
    module = models.from_config(cfg, data_shape=shape, num_classes=10)
    assert module.num_classes == 10
    x = jnp.zeros((2,) + shape)
    variables = jax.eval_shape(module.init, key(0), x, jnp.zeros(2))
    assert 100_000 <= models.count_params(variables) <= 300_000


@pytest.mark.parametrize("arch,shape", [("unet", (8, 8, 1)), ("mlp", (2,)), ("dit", (8, 8, 4)),
                                        ("mmdit", (8, 8, 4)), ("autoencoder", (8, 8, 3))])
def test_every_registered_arch_builds_from_its_default_config_with_the_common_call(arch, shape):
    assert set(models.ARCHS) == {"unet", "mlp", "dit", "mmdit", "autoencoder"}
    cfg = models.default_config(arch)
    assert set(cfg) <= set(models.ARCHS[arch].config_keys())
    module = models.from_config(cfg, data_shape=shape, num_classes=0)
    x, t = jnp.zeros((2,) + shape), jnp.zeros(2)
    # MMDiT is a text-to-image network: it needs the width of a context to initialise.
    cond = {"context": jnp.zeros((2, 3, 5))} if arch == "mmdit" else None
    out = jax.eval_shape(lambda: module.apply(module.init(key(0), x, t, cond), x, t, cond,
                                              train=False, rngs={"dropout": key(1)}))
    assert out.shape == x.shape and out.dtype == jnp.float32


def test_config_keys_are_the_module_fields():
    # A new module field is a config key with no second list to keep in step.
    cfg = _unet_cfg(remat=True, attn_implementation="xla", cross_attn_resolutions=[4],
                    context_dim=7)
    module = models.from_config(cfg, data_shape=(8, 8, 1), num_classes=0)
    assert (module.remat, module.attn_implementation, module.cross_attn_resolutions,
            module.context_dim) == (True, "xla", (4,), 7)


def test_config_ignores_other_arch_and_recipe_keys():
    cfg = models.default_mlp_config()
    cfg.ch = 64  # a U-Net key
    cfg.target = "eps"
    cfg.sigma_data = 0.5
    assert isinstance(models.from_config(cfg, data_shape=(2,), num_classes=0), models.MLP)


def _unet_cfg(**overrides):
    cfg = models.default_unet_config()
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("cfg,shape,words", [
    (_unet_cfg(arch="resnet"), (8, 8, 1), ["'resnet'", "unet", "mlp"]),
    (_unet_cfg(ch_mult=(1, 2, 2, 2)), (28, 28, 1), ["28x28", "ch_mult", "divisible by 8"]),
    (_unet_cfg(embedding="fourer"), (8, 8, 1), ["'fourer'", "sinusoidal", "fourier"]),
    (_unet_cfg(attn_resolutions=(16,)), (8, 8, 1), ["attn_resolutions", "16", "[8, 4]"]),
    (_unet_cfg(num_heads=3), (8, 8, 1), ["num_heads"]),
    (_unet_cfg(dtype="float16"), (8, 8, 1), ["'float16'", "float32", "bfloat16"]),
    (_unet_cfg(), (64,), ["(H, W, C)"]),
    (models.default_mlp_config(), (8, 8, 1), ["(D,)"]),
])
def test_bad_config_raises_before_building(cfg, shape, words):
    for check in (lambda: models.validate(cfg, shape),
                  lambda: models.from_config(cfg, data_shape=shape, num_classes=0)):
        with pytest.raises(ValueError) as err:
            check()
        for word in words:
            assert word in str(err.value), (word, str(err.value))


def test_unknown_config_key_is_named():
    cfg = models.default_unet_config()
    cfg.chanels = 64
    with pytest.raises(ValueError, match="model.chanels"):
        models.validate(cfg, (8, 8, 1))


def test_class_conditional_without_classes_is_rejected():
    cfg = _unet_cfg(class_conditional=True)
    with pytest.raises(ValueError, match="class_conditional"):
        models.from_config(cfg, data_shape=(8, 8, 1), num_classes=0)


def test_get_names_bad_arch_and_bad_field():
    with pytest.raises(ValueError, match="'transformer'.*unet, mlp"):
        models.get("transformer")
    with pytest.raises(ValueError, match="'widht'"):
        models.get("mlp", widht=3)
    assert isinstance(models.get("unet", ch=16), models.UNet)


def test_module_rejects_bad_input_at_trace_time():
    # eval_shape traces without computing: the error comes before any FLOP.
    x, t = jnp.zeros((2, 28, 28, 1)), jnp.zeros(2)
    with pytest.raises(ValueError, match="divisible by 8"):
        jax.eval_shape(models.UNet(ch_mult=(1, 2, 2, 2)).init, key(0), x, t)
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(models.MLP().init, key(0), jnp.zeros((2, 2)), t,
                       {"label": jnp.zeros(2, jnp.int32)})
