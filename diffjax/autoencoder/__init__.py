"""Autoencoders and latent diffusion (Rombach et al. 2022; DESIGN §7, §9).

* :mod:`~diffjax.autoencoder.model`: the KL autoencoder (SD's AutoencoderKL design),
  ``config.model.arch = "autoencoder"``.
* :mod:`~diffjax.autoencoder.diffusers`: :func:`load_diffusers_vae`, a diffusers-format
  AutoencoderKL folder (e.g. sd-vae-ft-ema) read into it without torch.
* :mod:`~diffjax.autoencoder.spec`: ``config.latent`` and ``config.autoencoder``, and what a
  latent run's network sees (read from the autoencoder's files, no arrays).
* :mod:`~diffjax.autoencoder.task`: the ``autoencoder`` task of the one trainer
  (reconstruction + KL) and its evaluation (``psnr``, ``fd_shapes_recon``, latent statistics).
* :mod:`~diffjax.autoencoder.latent`: ``config.latent.autoencoder = DIR`` wraps any task to
  train on ``scale * (z - shift)`` of the frozen encoder, and decodes samples.

The two trainer modules register themselves when :mod:`diffjax.train` is imported; this
package's top level imports no trainer code.
"""
from diffjax.autoencoder.diffusers import VAE, VAEWeightsError, load_diffusers_vae
from diffjax.autoencoder.model import AutoencoderKL, check_autoencoder, factor

__all__ = ["AutoencoderKL", "VAE", "VAEWeightsError", "check_autoencoder", "factor",
           "load_diffusers_vae"]
