"""The tiny text-conditioned run that tests/test_t2i.py trains and tests/test_controlnet.py
uses as its frozen base: trained once per worker (the ``text_base`` fixture of
tests/conftest.py; the two modules run on one worker).

A U-Net with cross-attention on digits, conditioned on precomputed "text": example i gets the
embedding of its label, row ``table[label]`` of a fixed random table; odd digits get a
two-token "prompt" (the last token masked); the null is a one-token prompt of zeros.
"""
from __future__ import annotations

import os

import numpy as np

L, D = 3, 8  # tokens per prompt, embedding width
NUM_STEPS = 3


def embeddings(data_dir: str, root: str) -> tuple[str, np.ndarray]:
    """Writes ``root/emb_{train,test}.npz``; returns their pattern and the table."""
    from diffjax import data

    table = np.random.default_rng(0).normal(size=(10, L, D)).astype(np.float32)
    for split in ("train", "test"):
        _, labels = data.load_arrays("digits", split, data_dir)
        mask = np.ones((len(labels), L), np.int32)
        mask[labels % 2 == 1, 2] = 0  # odd digits: a two-token "prompt"
        np.savez(os.path.join(root, f"emb_{split}.npz"), context=table[labels],
                 context_mask=mask, null_context=np.zeros((L, D), np.float32),
                 null_context_mask=np.array([1, 0, 0], np.int32))
    return os.path.join(root, "emb_{split}.npz"), table


def config(data_dir: str, pattern: str, **changes):
    """The run's config: 8x8 digits, batch 8, a two-level U-Net (8 channels) with
    cross-attention at 4x4, label dropout 0.25, 3 steps; guided Euler sampling (2 steps,
    scale 2). ``changes`` are dotted keys."""
    from diffjax import configs

    config = configs.default_config()
    config.data.update(dataset="digits", data_dir=data_dir, batch_size=8)
    config.model = configs.default_model_config("unet")
    config.model.update(ch=8, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(),
                        cross_attn_resolutions=(4,), text_encoder="precomputed", dropout=0.0)
    config.text.embeddings = pattern
    config.loss.label_dropout = 0.25
    config.training.update(num_steps=NUM_STEPS, log_every=1, eval_every=0,
                           checkpoint_every=NUM_STEPS, progress_bar=False)
    config.sampling.update(sampler="euler", num_steps=2, guidance_scale=2.0)
    for dotted, value in changes.items():
        group, key = dotted.split(".")
        config[group][key] = value
    return config


def train_base(root: str) -> dict:
    """Embeddings and data under ``root``, and the run trained in ``root/base``: its config,
    workdir, final state, the embedding table and the data directory."""
    from diffjax import config_validation, train

    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir, exist_ok=True)
    pattern, table = embeddings(data_dir, root)
    base_config = config(data_dir, pattern)
    config_validation.validate(base_config)
    workdir = os.path.join(root, "base")
    state = train.train(base_config, workdir)
    return dict(config=base_config, workdir=workdir, state=state, table=table,
                data_dir=data_dir, root=root)
