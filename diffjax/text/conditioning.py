"""Text conditions of a run: prompts -> condition dicts, the empty prompt, per-example tables.

``config.model.text_encoder`` picks one :class:`TextConditioner` (:func:`from_config`):

=============  ========================  ==================================================
encoder        condition keys            where the token states come from
=============  ========================  ==================================================
minilm         context, context_mask     the frozen pretrained all-MiniLM-L6-v2, computed
                                         once per unique caption of a split and cached
learned        text, text_mask           word ids; the network's own text transformer
                                         (:mod:`diffjax.text.network`) reads them
precomputed    context, context_mask     a user's file per split (:mod:`.precomputed`)
=============  ========================  ==================================================

Training data reach the pipeline as a :class:`CondTable` (a table of distinct conditions
and each record's row in it), so the 50 000 shapes captions cost 22 000 encoder passes
and one float16 table, not a copy per record. The empty prompt ``""`` is the null text of
classifier-free guidance (:class:`diffjax.conditions.Nulls`), used by training dropout and
by guidance alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional, Sequence

import ml_collections
import numpy as np

from diffjax import atomic
from diffjax import conditions
from diffjax.text import ENCODERS, check_encoder

CAPTIONED = ("shapes", "shapes_64")  # bundled data sets with a ``caption`` feature
DEFAULT_CACHE_DIR = "~/.cache/diffjax/text"


@dataclasses.dataclass(frozen=True)
class CondTable:
    """Per-record conditions of a split: record ``i`` has ``{k: table[k][rows[i]]}``."""

    rows: np.ndarray
    table: dict

    def lookup(self, index: int) -> dict[str, np.ndarray]:
        row = self.rows[index]
        return {k: (v[row].astype(np.float32) if v.dtype == np.float16 else v[row])
                for k, v in self.table.items()}


def captions(dataset: str, split: str, data_dir: Optional[str] = None) -> np.ndarray:
    """The ``caption`` of every record of a captioned bundled split (object array of str)."""
    if dataset not in CAPTIONED:
        raise ValueError(f"config.model.text_encoder needs captions; dataset {dataset!r} has "
                         f"none (captioned data sets: {', '.join(CAPTIONED)}; or use "
                         "text_encoder='precomputed' with embeddings of your own)")
    from diffjax.data import shapes_builder  # deferred: pulls in tfds
    return shapes_builder.load_records(dataset, split, data_dir)["caption"]


def _unique(texts: np.ndarray) -> tuple[list[str], np.ndarray]:
    unique, rows = np.unique(np.asarray(texts, dtype=str), return_inverse=True)
    return [str(u) for u in unique], rows.astype(np.int32)


class TextConditioner:
    """What a run needs of its text encoder (see the module docstring)."""

    name: str = ""
    keys: tuple[str, str] = ("context", "context_mask")

    @property
    def context_dim(self) -> Optional[int]:
        """Width of the token states cross-attention reads (None: the network's own)."""
        raise NotImplementedError

    def encode(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """The condition of each prompt: ``{key: [B, ...]}`` (ValueError for a prompt the
        encoder cannot represent)."""
        raise NotImplementedError

    def empty(self) -> dict[str, np.ndarray]:
        """The empty prompt's condition ``{key: [1, ...]}`` (computed once, eagerly: it is
        also asked for while a network's initialisation is being traced)."""
        if getattr(self, "_empty", None) is None:
            import jax
            with jax.ensure_compile_time_eval():
                self._empty = self.encode([""])
        return self._empty

    def nulls(self) -> conditions.Nulls:
        """The empty prompt's condition, the null of guidance and dropout."""
        return conditions.Nulls(**{k: v[0] for k, v in self.empty().items()})

    def example(self, batch: int = 1) -> dict[str, np.ndarray]:
        """A condition of the right shapes (the empty prompt), for initialisation."""
        return {k: np.repeat(v, batch, axis=0) for k, v in self.empty().items()}

    def data_table(self, dataset: str, split: str,
                   data_dir: Optional[str] = None) -> CondTable:
        """The conditions of every record of a split, as a :class:`CondTable`."""
        unique, rows = _unique(captions(dataset, split, data_dir))
        return CondTable(rows, self._encode_table(unique, f"{dataset}-{split}"))

    def _encode_table(self, unique: list[str], tag: str) -> dict[str, np.ndarray]:
        return self.encode(unique)


class MiniLMConditioner(TextConditioner):
    """The frozen pretrained all-MiniLM-L6-v2 (:mod:`diffjax.text.minilm`)."""

    name = "minilm"

    def __init__(self, max_length: int, cache_dir: Optional[str] = None,
                 model_dir: Optional[str] = None, progress: bool = True):
        from diffjax.text import minilm
        self.encoder = minilm.MiniLM(model_dir, max_length=max_length)
        self.cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
        self.progress = progress

    @property
    def context_dim(self) -> int:
        return self.encoder.width

    def encode(self, prompts: Sequence[str], chunk: int = 256) -> dict[str, np.ndarray]:
        self.encoder.tokenize(list(prompts))  # refuses a too-long prompt before any compute
        parts = [self.encoder.encode(list(prompts[i:i + chunk]))
                 for i in range(0, len(prompts), chunk)]
        return {k: np.concatenate([p[k] for p in parts]) for k in self.keys}

    def _identity(self, unique: list[str]) -> str:
        h = hashlib.sha256()
        for name in ("config.json", "tokenizer.json"):
            with open(os.path.join(self.encoder.model_dir, name), "rb") as f:
                h.update(f.read())
        weights = os.path.join(self.encoder.model_dir, "model.safetensors")
        h.update(str(os.path.getsize(weights)).encode())
        h.update(f"L={self.encoder.max_length}".encode())
        h.update("\n".join(unique).encode())
        return h.hexdigest()[:20]

    def _encode_table(self, unique: list[str], tag: str) -> dict[str, np.ndarray]:
        """Token states of each unique caption, float16, cached on disk by content."""
        path = os.path.join(self.cache_dir, f"minilm-{tag}-{self._identity(unique)}.npz")
        if os.path.isfile(path):
            with np.load(path) as f:
                return {k: f[k] for k in self.keys}
        chunk, parts = 512, []
        for i in range(0, len(unique), chunk):
            parts.append(self.encode(unique[i:i + chunk]))
            if self.progress:
                print(f"text: minilm embeddings of {tag} captions {min(i + chunk, len(unique))}"
                      f"/{len(unique)} (cached in {self.cache_dir})", flush=True)
        table = {"context": np.concatenate([p["context"] for p in parts]).astype(np.float16),
                 "context_mask": np.concatenate([p["context_mask"] for p in parts])}
        os.makedirs(self.cache_dir, exist_ok=True)
        atomic.write_npz(path, **table)  # a killed run leaves no half-written cache
        return table


class LearnedConditioner(TextConditioner):
    """Word ids for the network's own text transformer (:mod:`diffjax.text.learned`); the
    vocabulary is that of the training split's captions."""

    name = "learned"
    keys = ("text", "text_mask")

    def __init__(self, vocab_captions: Sequence[str], max_length: int, width: int):
        from diffjax.text import learned
        self.vocab = learned.WordVocab.from_captions(vocab_captions, max_length)
        self.width = width

    @property
    def context_dim(self) -> int:
        return self.width

    def encode(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        ids, mask = self.vocab.tokenize(list(prompts))
        return {"text": ids, "text_mask": mask}


class PrecomputedConditioner(TextConditioner):
    """Embeddings from a user's file per split (``config.text.embeddings`` with ``{split}``)."""

    name = "precomputed"

    def __init__(self, pattern: str):
        if not pattern or "{split}" not in pattern:
            raise ValueError(f"config.text.embeddings={pattern!r}: text_encoder='precomputed' "
                             "needs a file path containing '{split}' (e.g. emb_{split}.npz)")
        self.pattern = pattern
        self._files: dict = {}
        self._nulls: Optional[conditions.Nulls] = None
        self._width: Optional[int] = None

    def _load(self, split: str):
        from diffjax.text import precomputed
        path = self.pattern.format(split=split.split("[")[0])
        if path not in self._files:  # one read per file and process
            self._files[path] = precomputed.load(path)
        cond, nulls = self._files[path]
        self._nulls, self._width = nulls, cond["context"].shape[-1]
        return cond, nulls

    @property
    def context_dim(self) -> int:
        if self._width is None:
            self._load("train")
        return self._width

    def encode(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        raise ValueError("text_encoder='precomputed' cannot encode a new prompt: it only has the "
                         f"embeddings in {self.pattern!r}; use 'minilm' or 'learned' to sample "
                         "from prompts")

    def nulls(self) -> conditions.Nulls:
        if self._nulls is None:
            self._load("train")
        return self._nulls

    def example(self, batch: int = 1) -> dict[str, np.ndarray]:
        nulls = self.nulls()
        return {"context": np.repeat(np.asarray(nulls.context)[None], batch, axis=0),
                "context_mask": np.repeat(np.asarray(nulls.context_mask)[None], batch, axis=0)}

    def data_table(self, dataset: str, split: str,
                   data_dir: Optional[str] = None) -> CondTable:
        from diffjax import data as data_lib
        info = data_lib.info(dataset, data_dir)
        n = {"train": info.num_train, "test": info.num_test}.get(split.split("[")[0])
        cond, _ = self._load(split)
        if n is not None and len(cond["context"]) != n:
            raise ValueError(f"{self.pattern.format(split=split)}: {len(cond['context'])} rows "
                             f"of embeddings for the {n} examples of {dataset!r} {split}")
        return CondTable(np.arange(len(cond["context"]), dtype=np.int32), cond)


def default_config() -> ml_collections.ConfigDict:
    """``config.text``: the settings of the text encoder named by ``model.text_encoder``."""
    return ml_collections.ConfigDict({
        "max_length": 24,        # tokens (minilm) or words + <eos> (learned); longer is refused
        "width": 128,            # learned: the text transformer's width, depth and heads
        "depth": 2,
        "num_heads": 4,
        "embeddings": ml_collections.FieldReference(None, field_type=str),  # precomputed
        "cache_dir": ml_collections.FieldReference(None, field_type=str),   # minilm tables
    })


_CACHE: dict = {}


def from_config(config: ml_collections.ConfigDict) -> Optional[TextConditioner]:
    """The run's text conditioner, or None when ``config.model.text_encoder`` is unset.
    One per process and setting (MiniLM's weights load once)."""
    name = config.model.get("text_encoder") or ""
    if not name:
        return None
    check_encoder(name)
    text = config.get("text") or default_config()
    dataset, data_dir = config.data.dataset, config.data.get("data_dir")
    key = (name, dataset, data_dir, text.max_length, text.width, text.get("embeddings"),
           text.get("cache_dir"))
    if key not in _CACHE:
        if name == "minilm":
            _CACHE[key] = MiniLMConditioner(text.max_length, text.get("cache_dir"))
        elif name == "learned":
            _CACHE[key] = LearnedConditioner(captions(dataset, "train", data_dir),
                                             text.max_length, text.width)
        else:
            _CACHE[key] = PrecomputedConditioner(text.get("embeddings") or "")
    return _CACHE[key]


__all__ = ["CAPTIONED", "CondTable", "ENCODERS", "LearnedConditioner", "MiniLMConditioner",
           "PrecomputedConditioner", "TextConditioner", "captions", "default_config",
           "from_config"]
