"""What makes a stored run's config unusable for a new one (``check_compatible`` of
:mod:`diffjax.checkpoint`): another model, path, target or data shape; on resuming, other
data-loader settings."""
from __future__ import annotations

import json
from typing import Any, Optional

import ml_collections

from diffjax.choices import DATA_LOADER_KEYS

# config.model keys that change how the network computes, not what its parameters are.
_MODEL_KEYS_FREE_TO_CHANGE = ("dtype", "dropout")
# config.latent keys that say what a latent run's network models, x = scale * (z - shift),
# with their defaults (absent from older config.json files): sampling under others decodes
# the samples wrongly.
_LATENT_KEYS = {"scale": None, "shift": None, "per_channel": False}


def _data_signature(config: ml_collections.ConfigDict) -> Optional[tuple]:
    from diffjax import data  # deferred: tfds is slow to import

    try:
        info = data.info_of(config.data)
    except Exception:  # a stored dataset that is not known here: compare names instead
        return None
    return tuple(info.shape), info.num_classes


def _differences(old: dict, new: dict, prefix: str) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{prefix}.{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
            for k in keys if old.get(k) != new.get(k)]


def incompatibilities(old: ml_collections.ConfigDict,
                      new: ml_collections.ConfigDict) -> list[str]:
    """What makes a checkpoint of ``old`` unusable for ``new``: model, path, target, data shape."""
    old_model = {k: v for k, v in _model_with_defaults(old.model).items()
                 if k not in _MODEL_KEYS_FREE_TO_CHANGE}
    new_model = {k: v for k, v in new.model.to_dict().items() if k not in _MODEL_KEYS_FREE_TO_CHANGE}
    found = _differences(_jsonable(old_model), _jsonable(new_model), "model")
    found += _differences(_jsonable(old.path.to_dict()), _jsonable(new.path.to_dict()), "path")
    old_data, new_data = _data_signature(old), _data_signature(new)
    if old_data is None or new_data is None:
        if old.data.dataset != new.data.dataset:
            found.append(f"data.dataset: {old.data.dataset!r} -> {new.data.dataset!r}")
    elif old_data != new_data:
        found.append(f"data (shape, num_classes): {old_data} -> {new_data}")
    latent = [{k: (d if _get(c, f"latent.{k}") is _UNSET else _get(c, f"latent.{k}"))
               for k, d in _LATENT_KEYS.items()} for c in (old, new)]
    found += _differences(*latent, "latent")
    return found


def _model_with_defaults(model: ml_collections.ConfigDict) -> dict:
    """A stored ``config.model``, with the keys its architecture gained since the run was
    made (absent from its config.json) at their defaults: the behaviour the run had."""
    from diffjax.models import registry  # deferred: flax is slow to import

    stored = model.to_dict()
    arch = registry.ARCHS.get(stored.get("arch"))
    if arch is None:
        return stored
    return {**arch.default_config().to_dict(), **stored}


def _jsonable(d: dict) -> dict:
    # Tuples from config files and lists from JSON compare equal after a round trip.
    return json.loads(json.dumps(d))


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, (dict, ml_collections.ConfigDict)) or part not in node:
            return _UNSET
        node = node[part]
    return node


_UNSET = object()


def data_loader_changes(old: ml_collections.ConfigDict,
                        new: ml_collections.ConfigDict) -> list[str]:
    """The data-loader settings (:data:`diffjax.choices.DATA_LOADER_KEYS`) that differ: a
    checkpointed iterator position is meaningless under other values. Keys an older
    config.json lacks are not compared."""
    found = []
    for key in DATA_LOADER_KEYS:
        a, b = _get(old, key), _get(new, key)
        if a is not _UNSET and b is not _UNSET and _jsonable({"v": a}) != _jsonable({"v": b}):
            found.append(f"config.{key}: {a!r} -> {b!r}")
    return found
