"""Per-record image transforms of the input pipeline.

``center_crop`` is the preprocessing of ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat
GANs on Image Synthesis", guided-diffusion ``image_datasets.py``), which DiT (Peebles & Xie
2023), SiT and MeanFlow reuse for ImageNet: halve the image with a box filter while its short
side is at least twice the target, resize it bicubically so the short side equals the target,
then cut the central square. It is what ``config.data.image_size`` does to every image, so
data sets of images of every size (``imagenet2012``) train at one resolution, and the FID
reference statistics are computed on the same crops.
"""
from __future__ import annotations

import grain
import numpy as np
from PIL import Image


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """ADM's resize-and-centre-crop of a uint8 ``[H, W, C]`` image to ``[size, size, C]``.

    The crop offsets are ``(H' - size) // 2`` and ``(W' - size) // 2`` of the resized
    image ``[H', W']`` (an odd margin leaves its extra pixel at the bottom/right).
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"center_crop takes uint8 [H, W, C] images, got {image.dtype} "
                         f"{image.shape}")
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    while min(pil.size) >= 2 * size:
        pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
    scale = size / min(pil.size)
    pil = pil.resize(tuple(round(s * scale) for s in pil.size), resample=Image.BICUBIC)
    out = np.asarray(pil)
    top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
    out = out[top:top + size, left:left + size]
    return np.ascontiguousarray(out.reshape(size, size, channels))


class CenterCropped:
    """A random-access source whose records' ``x`` is :func:`center_crop`-ed to ``size``.

    The crop runs where the record is read (grain's reader threads), and the repr names the
    size, so a grain checkpoint refuses to resume at another resolution.
    """

    def __init__(self, source, size: int):
        self._source, self.size = source, int(size)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        record = self._source[index]
        return {**record, "x": center_crop(np.asarray(record["x"]), self.size)}

    def __repr__(self) -> str:
        return f"{self._source!r}.center_crop({self.size})"


def mirror(record: dict, flip) -> dict:
    """``record`` with its image mirrored along W where ``flip`` (a bool for one record
    ``x [H, W, C]``, or bool ``[b]`` for a batch ``x [b, H, W, C]``). A record of cached
    latents carries the moments of its mirror image (``x_flip``, ``x_logvar_flip``): those
    are taken instead, and the ``*_flip`` keys dropped either way."""
    flip = np.asarray(flip, bool)

    def pick(a, b):
        return np.where(flip.reshape(flip.shape + (1,) * (a.ndim - flip.ndim)), b, a)

    if "x_flip" in record:
        kept = {k: v for k, v in record.items() if not k.endswith("_flip")}
        kept.update(x=pick(record["x"], record["x_flip"]),
                    x_logvar=pick(record["x_logvar"], record["x_logvar_flip"]))
        return kept
    x = record["x"]
    return {**record, "x": pick(x, np.flip(x, axis=flip.ndim + 1))}


class RandomHorizontalFlip(grain.transforms.RandomMap):
    """Mirrors an image [H, W, C] along W with probability 1/2.

    A record of cached latents carries the moments of its mirror image (``x_flip``,
    ``x_logvar_flip``): those are taken instead, with the same draw. grain seeds ``rng`` from
    the sampler seed and the record's global position, so the flips are the same on every run
    and after restoring an iterator's state.
    """

    def random_map(self, element: dict[str, np.ndarray],
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
        return mirror(element, rng.random() < 0.5)
