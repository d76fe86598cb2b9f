"""The ``autoencoder`` task of the one trainer, its evaluation and its latent statistics.

Loss (Rombach et al. 2022, the KL-regularised first stage, without the perceptual term):
``mean |x - D(z)|`` (or squared) with ``z ~ q(z|x) = N(mean, exp(logvar))``, plus
``kl_weight * KL(q(z|x) || N(0, I)) / (H W C)``. LDM sums both terms over the pixels;
dividing both by the pixel count keeps SD's ``kl_weight = 1e-6`` meaning the same. Optionally
``gradient_weight`` times the error of the image's finite differences (sharper edges, which
the shapes detector's features, hence ``fd_shapes_recon``, are very sensitive to), and from
step ``disc_start`` the adversarial terms of LDM's first stage (Esser et al. 2021, VQGAN):
a PatchGAN (``model.disc_channels``) trained by the hinge loss, and the generator's
``-mean D(x_hat)`` weighted by ``disc_weight`` times the adaptive weight
``|grad rec| / (|grad g| + 1e-4)`` at the decoder's last layer. Both players are trained by
the one optimizer through stop-gradients (each term reaches only its own player's
parameters), so they share Adam's betas, where LDM gives each its own optimizer.

Evaluation (``eval_every``, and ``--mode=eval``), on the EMA parameters:

* ``psnr``: mean over the first ``eval.num_samples`` test images of
  ``10 log10(2^2 / mse)``, reconstructions from the posterior mean clipped to [-1, 1];
* ``fd_shapes_recon`` / ``fd_shapes_recon_floor`` (shapes data): ``fd_shapes`` of the
  reconstructions of ``n`` train images against the test split, and of those ``n`` train
  images themselves (the floor: what a perfect reconstruction scores);
* ``latent_mean`` / ``latent_std``: of ``z ~ q(z|x)`` over ``autoencoder.stats_examples``
  train images. They become ``shift`` and ``scale = 1 / std``, written with the parameters'
  digest to ``workdir/latent_stats.json``: a latent run trains on ``scale * (z - shift)``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import atomic
from diffjax import parallel, reporting, xla_options
from diffjax.autoencoder import spec
from diffjax.autoencoder.model import AutoencoderKL
from diffjax.training import frozen, tasks
from diffjax.training.setup import Setup

Array = jax.Array
STATS_FILE = "latent_stats.json"


def _group(setup: Setup) -> Any:
    return (setup.config.get("autoencoder") if setup.config is not None else None) or \
        spec.autoencoder_config()


def kl_divergence(mean: Array, logvar: Array) -> Array:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per example, nats: ``[B, ...] -> [B]``."""
    terms = 0.5 * (mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(terms.reshape(terms.shape[0], -1), axis=-1)


def image_gradient_error(err: Array) -> Array:
    """``mean |d(x_hat - x)/dh| + |d(x_hat - x)/dw|`` (finite differences): the gradient
    difference loss of Mathieu et al. 2016, which penalises blurred edges that a per-pixel
    loss forgives. ``err: [B, H, W, C]``."""
    return (jnp.mean(jnp.abs(err[:, 1:] - err[:, :-1])) +
            jnp.mean(jnp.abs(err[:, :, 1:] - err[:, :, :-1])))


def last_layer_gradient(features: Array, kernel: Array, cotangent: Array) -> Array:
    """The gradient w.r.t. a 3x3 SAME convolution's ``kernel`` [3, 3, C, O] of a loss whose
    gradient w.r.t. the convolution's output is ``cotangent`` [B, H, W, O], at input
    ``features`` [B, H, W, C]; the bias does not enter."""
    conv = lambda k: jax.lax.conv_general_dilated(  # noqa: E731
        features, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.vjp(conv, kernel)[1](cotangent)[0]


def hinge_d_loss(logits_real: Array, logits_fake: Array) -> Array:
    """The discriminator's hinge loss (Lim & Ye 2017), as LDM's first stage trains it."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) +
                  jnp.mean(jax.nn.relu(1.0 + logits_fake)))


@dataclasses.dataclass(frozen=True)
class Autoencode:
    """Reconstruction + KL (+ adversarial) of :class:`AutoencoderKL` (the module docstring)."""

    setup: Setup
    reconstruction: str = "l1"
    kl_weight: float = 1e-6
    gradient_weight: float = 0.0
    disc_weight: float = 0.0
    disc_start: int = 0

    @property
    def reads_step(self) -> bool:
        return self.disc_weight > 0

    def _reconstruction(self, x_rec: Array, x: Array) -> tuple[Array, tuple[Array, Array]]:
        err = x_rec - x
        rec = jnp.mean(jnp.abs(err)) if self.reconstruction == "l1" else jnp.mean(err ** 2)
        edges = image_gradient_error(err)
        return rec + self.gradient_weight * edges, (rec, edges)

    def loss(self, params, batch, key, frozen, rows=None):
        del frozen  # reads no other run
        net, x = self.setup.net, batch["x"]
        mean, logvar = net.apply({"params": params}, x, method=AutoencoderKL.encode)
        total = x.shape[0] if rows is None else rows.total
        eps = jax.random.normal(key, (total,) + mean.shape[1:], mean.dtype)
        eps = eps if rows is None else rows.take(eps)
        z = mean + jnp.exp(0.5 * logvar) * eps
        x_rec, features = net.apply({"params": params}, z,
                                    method=AutoencoderKL.decode_with_features)
        rec_loss, (rec, edges) = self._reconstruction(x_rec, x)
        kl = jnp.mean(kl_divergence(mean, logvar))
        loss = rec_loss + self.kl_weight * kl / np.prod(x.shape[1:])
        aux = {"reconstruction": rec, "kl": kl, "mse": jnp.mean((x_rec - x) ** 2),
               "gradient_error": edges}
        if self.disc_weight > 0:
            adversarial, more = self._adversarial(params, x, x_rec, features, batch["step"][0])
            loss, aux = loss + adversarial, {**aux, **more}
        return loss, aux

    def _adversarial(self, params, x, x_rec, features, step):
        """``on * (disc_weight * lambda * g_loss + d_loss)``: the generator term reaches the
        autoencoder only (the discriminator's parameters held), the hinge term the
        discriminator only (the reconstruction held); ``lambda`` balances the two gradients
        at the decoder's last layer (Esser et al. 2021, eq. 7), ``on`` is 0 before
        ``disc_start``."""
        net = self.setup.net

        def logits(disc_params, images):
            return net.apply({"params": {**params, "discriminator": disc_params}}, images,
                             method=AutoencoderKL.discriminate)

        held = jax.lax.stop_gradient(params["discriminator"])
        # One discriminator pass gives the generator term and its gradient at the image.
        g_loss, g_vjp = jax.vjp(lambda v: -jnp.mean(logits(held, v)), x_rec)
        d_image = jax.lax.stop_gradient(g_vjp(jnp.ones_like(g_loss))[0])
        y, h = jax.lax.stop_gradient(x_rec), jax.lax.stop_gradient(features)
        kernel = jax.lax.stop_gradient(params["decoder"]["conv_out"]["kernel"])
        grad_rec = last_layer_gradient(h, kernel, jax.grad(
            lambda v: self._reconstruction(v, x)[0])(y).astype(h.dtype))
        grad_g = last_layer_gradient(h, kernel, d_image.astype(h.dtype))
        lam = jnp.linalg.norm(grad_rec) / (jnp.linalg.norm(grad_g) + 1e-4)
        lam = jax.lax.stop_gradient(jnp.clip(lam, 0.0, 1e4))
        real = logits(params["discriminator"], x)
        fake = logits(params["discriminator"], jax.lax.stop_gradient(x_rec))
        d_loss = hinge_d_loss(real, fake)
        on = (step >= self.disc_start).astype(jnp.float32)
        total = on * (self.disc_weight * lam * g_loss + d_loss)
        return total, {"g_loss": g_loss, "d_loss": d_loss, "adaptive_weight": lam,
                       "logits_real": jnp.mean(real), "logits_fake": jnp.mean(fake)}


def build(setup: Setup, references) -> Autoencode:
    group = _group(setup)
    return Autoencode(setup, str(group.reconstruction), float(group.kl_weight),
                      float(group.get("gradient_weight", 0.0)),
                      float(group.get("disc_weight", 0.0)), int(group.get("disc_start", 0)))


# ----------------------------------------------------------------------------- evaluation
@xla_options.jit
def _psnr(x: Array, y: Array) -> Array:
    """Per-image PSNR of images in [-1, 1] (peak-to-peak 2): ``[B, ...] -> [B]``."""
    mse = jnp.mean(((x - y) ** 2).reshape(x.shape[0], -1), axis=-1)
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


class Codec:
    """Batched, jitted encode/decode of one :class:`AutoencoderKL` (parameters traced)."""

    def __init__(self, module: AutoencoderKL, batch_size: int = 500):
        self.module, self.batch_size = module, batch_size
        self._encode = xla_options.jit(lambda p, x: module.apply({"params": p}, x,
                                                                 method=AutoencoderKL.encode))
        self._decode = xla_options.jit(lambda p, z: module.apply({"params": p}, z,
                                                                 method=AutoencoderKL.decode))

    def _batched(self, fn, params, x: np.ndarray) -> list:
        return [jax.device_get(fn(params, x[i:i + self.batch_size]))
                for i in range(0, len(x), self.batch_size)]

    def encode(self, params: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._batched(self._encode, params, x)
        return np.concatenate([m for m, _ in out]), np.concatenate([v for _, v in out])

    def decode(self, params: Any, z: np.ndarray) -> np.ndarray:
        return np.concatenate(self._batched(self._decode, params, z))

    def reconstruct(self, params: Any, x: np.ndarray) -> np.ndarray:
        return np.clip(self.decode(params, self.encode(params, x)[0]), -1.0, 1.0)


def latent_moments(codec: Codec, params: Any, x: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Mean and std of ``z ~ q(z|x)`` over all of ``x`` (every latent entry), the
    ``shift = mean``, ``scale = 1 / std`` that make them zero-mean, unit-variance, and the same
    per channel (``channel_mean``, ``channel_std``: lists over the last axis)."""
    mean, logvar = codec.encode(params, x)
    eps = np.random.default_rng(seed).standard_normal(mean.shape).astype(np.float32)
    z = mean + np.exp(0.5 * logvar) * eps
    m, s = float(z.mean()), float(z.std())
    per = z.reshape(-1, z.shape[-1]).astype(np.float64)
    return {"latent_mean": m, "latent_std": s, "shift": m, "scale": 1.0 / s,
            "channel_mean": per.mean(0).tolist(), "channel_std": per.std(0).tolist()}


def write_stats(workdir: str, stats: dict[str, Any]) -> None:
    """``workdir/latent_stats.json`` (atomically, main process)."""
    if not parallel.is_main_process():
        return
    atomic.write_json(os.path.join(workdir, STATS_FILE), stats, indent=2, sort_keys=True)


def read_stats(workdir: str) -> Optional[dict[str, Any]]:
    path = os.path.join(workdir, STATS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _train_images(config, n: int) -> np.ndarray:
    from diffjax import data as data_lib

    return data_lib.load_arrays(config.data.dataset, "train", config.data.get("data_dir"),
                                limit=n, image_size=config.data.get("image_size"))[0]


def measure_stats(config, module: AutoencoderKL, params: Any,
                  batch_size: int = 500) -> dict[str, Any]:
    """The latent statistics of a trained autoencoder run on its own training data."""
    n = int((config.get("autoencoder") or spec.autoencoder_config()).stats_examples)
    x = _train_images(config, n)
    stats = latent_moments(Codec(module, batch_size), params, x, seed=int(config.seed))
    return {**stats, "num_examples": int(len(x)), "dataset": str(config.data.dataset),
            "params_sha256": frozen.params_digest(params)}


class AutoencoderEvaluator:
    """``evaluator(params, workdir, name) -> metrics`` of an autoencoder run (module doc)."""

    def __init__(self, setup: Setup, config, mesh=None, progress: bool = False):
        del mesh
        self.setup, self.config, self.progress = setup, config, progress
        self.codec = Codec(setup.net, int(config.eval.batch_size))
        self.last_outputs: list[str] = []

    def __call__(self, params: Any, workdir: str, name: str) -> dict[str, float]:
        from diffjax import data as data_lib

        config = self.config
        test = data_lib.load_arrays(config.data.dataset, "test", config.data.get("data_dir"),
                                    limit=config.eval.num_samples,
                                    image_size=config.data.get("image_size"))[0]
        recon = self.codec.reconstruct(params, test)
        results = {"psnr": float(np.mean(np.asarray(_psnr(recon, test))))}
        stats = measure_stats(config, self.setup.net, params, int(config.eval.batch_size))
        results.update(latent_mean=stats["latent_mean"], latent_std=stats["latent_std"])
        write_stats(workdir, stats)
        if "fd_shapes_recon" in spec.metric_names(config):
            results.update(self._fd_recon(params))
        if parallel.is_main_process():
            pairs = np.stack([test[:32], recon[:32]], axis=1).reshape((-1,) + test.shape[1:])
            self.last_outputs = reporting.save_figures(workdir, name, pairs, "image")
        return results

    def _fd_recon(self, params: Any) -> dict[str, float]:
        from diffjax.data import load_arrays
        from diffjax.evaluate import shapes_eval

        config = self.config
        train = _train_images(config, config.eval.num_samples)
        test = load_arrays(config.data.dataset, "test", config.data.get("data_dir"),
                           image_size=config.data.get("image_size"))[0]
        detector = shapes_eval.evaluator(config.eval.cache_dir)
        fd = shapes_eval.fd_shapes(self.codec.reconstruct(params, train), train, test,
                                   detector=detector)
        return {"fd_shapes_recon": fd["fd_shapes"], "fd_shapes_recon_floor": fd["fd_shapes_floor"]}


tasks.register("autoencoder", tasks.TaskSpec(build=build, evaluator=AutoencoderEvaluator))
