"""Text encoders for text-conditioned models: a Flax BERT (:mod:`.bert`) and the pretrained
all-MiniLM-L6-v2 built on it (:mod:`.minilm`)."""
