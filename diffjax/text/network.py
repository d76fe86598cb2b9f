"""A denoising network with its own text transformer (the ``learned`` encoder, GLIDE-style).

:class:`WithTextEncoder` reads ``cond["text"]`` / ``cond["text_mask"]`` (word ids), turns them
into token states with :class:`diffjax.text.learned.TextTransformer` and hands the wrapped
network ``cond["context"]`` / ``cond["context_mask"]``: the text transformer is trained with
the denoiser, its parameters under ``params["text_encoder"]``, the network's under
``params["net"]``. Every other condition passes through unchanged.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn

from diffjax.text.learned import TextTransformer


class WithTextEncoder(nn.Module):
    net: Any
    text_encoder: TextTransformer

    @nn.compact
    def __call__(self, x, noise_cond, cond: Optional[dict] = None, train: bool = False):
        cond = dict(cond or {})
        if "text" in cond:
            ids, mask = cond.pop("text"), cond.pop("text_mask")
            cond["context"], cond["context_mask"] = self.text_encoder(ids, mask), mask
        return self.net(x, noise_cond, cond, train=train)


def wrap(net: Any, conditioner: Any, text_cfg: Any) -> Any:
    """``net`` with the learned text transformer in front when ``conditioner`` is ``learned``;
    ``net`` itself otherwise (the frozen encoders' states come with the data)."""
    if getattr(conditioner, "name", "") != "learned":
        return net
    encoder = TextTransformer(len(conditioner.vocab), int(text_cfg.width), int(text_cfg.depth),
                              int(text_cfg.num_heads), int(text_cfg.max_length))
    return WithTextEncoder(net, encoder)
