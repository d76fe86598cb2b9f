"""Helpers for tests/test_train.py, and the runs that need a process of their own.

As a script (from the repository root)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python tests/_train_helpers.py devices OUT DATA_DIR
    python tests/_train_helpers.py host PORT PROCESS_ID OUT DATA_DIR     # one per process

``devices`` trains the tiny config on 8 simulated CPU devices with jit (replicated and FSDP
parameters, dropout on) and with pmap (dropout off and on); ``host`` is one of two processes of a multi-host run fed by
:class:`GlobalStream`. Each run leaves ``metrics.jsonl`` in its own directory under OUT.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import ml_collections  # noqa: E402

from diffjax import configs  # noqa: E402

NUM_STEPS = 50


def tiny_config(data_dir: str, **changes: Any) -> ml_collections.ConfigDict:
    """Flow matching on two moons with a small class-conditional MLP; 64 per batch, 50 steps.

    ``changes`` are dotted keys, e.g. ``tiny_config(d, **{"model.dropout": 0.1})``.
    """
    config = configs.default_config()
    config.data.dataset = "moons"
    config.data.data_dir = data_dir
    config.data.batch_size = 64
    config.model = configs.default_model_config("mlp")
    config.model.hidden = 32
    config.model.depth = 2
    config.model.class_conditional = True
    config.loss.label_dropout = 0.2
    config.optim.lr = 3e-3
    config.optim.warmup_steps = 5
    config.optim.schedule = "cosine"
    config.training.num_steps = NUM_STEPS
    config.training.log_every = 1
    config.training.eval_every = 0
    config.training.checkpoint_every = 25
    config.training.ema_decay = 0.9
    config.training.progress_bar = False
    config.parallel.fsdp_min_size = 1024
    configs.apply_recipe(config, "flow")
    for dotted, value in changes.items():
        group, key = dotted.split(".")
        config[group][key] = value
    return config


def losses(workdir: str) -> np.ndarray:
    """The logged training losses of a run, in step order (``[num_logged]``)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    records = [r for r in records if "loss" in r]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps), f"steps out of order: {steps}"
    return np.asarray([r["loss"] for r in records], np.float64)


class GlobalStream:
    """Deterministic global batches of the moons training set; yields this process's rows.

    Batch ``i`` is a fixed function of ``(seed, i)``, so one process reading all rows and
    several processes reading ``batch_size / process_count`` rows each see the same global
    batch. Checkpointable like a grain iterator (``get_state``/``set_state`` with bytes).
    """

    def __init__(self, config: ml_collections.ConfigDict, process_index: int,
                 process_count: int):
        from diffjax import data

        self.x, self.labels = data.load_arrays("moons", "train", config.data.data_dir,
                                               limit=4096)
        self.seed, self.index = config.seed, 0
        self.local = config.data.batch_size // process_count
        self.rows = slice(process_index * self.local, (process_index + 1) * self.local)
        self.batch_size = config.data.batch_size

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        picked = rng.integers(0, len(self.x), self.batch_size)[self.rows]
        self.index += 1
        return {"x": self.x[picked], "label": self.labels[picked]}

    def get_state(self) -> bytes:
        return json.dumps({"index": self.index}).encode()

    def set_state(self, state: bytes) -> None:
        self.index = json.loads(state.decode())["index"]

    def start_prefetch(self) -> None:  # called by grain's checkpoint handler on restore
        pass


def _devices(out: str, data_dir: str) -> None:
    import jax

    from diffjax import train

    assert jax.device_count() == 8, jax.devices()
    # jit runs with dropout: their masks too are drawn for the global batch. pmap draws
    # masks per device, so it is compared with and without dropout.
    dropout = {"model.dropout": 0.2}
    runs = {"jit": dropout, "fsdp": {**dropout, "parallel.param_sharding": "fsdp"},
            "pmap": {"parallel.backend": "pmap"},
            "pmap_dropout": {**dropout, "parallel.backend": "pmap"}}
    for name, changes in runs.items():
        train.train(tiny_config(data_dir, **changes), os.path.join(out, name))
    # The FSDP run really splits parameters: record the layout of its largest kernel.
    from diffjax import parallel
    recipe = train.build(tiny_config(data_dir))
    _, shardings = train.setup_state(recipe, tiny_config(data_dir, **runs["fsdp"]),
                                     parallel.make_mesh())
    specs = {jax.tree_util.keystr(p): str(s.spec)
             for p, s in jax.tree_util.tree_flatten_with_path(shardings.params)[0]}
    with open(os.path.join(out, "fsdp_specs.json"), "w") as f:
        json.dump(specs, f)


def _host(port: int, process_id: int, out: str, data_dir: str) -> None:
    from diffjax import parallel

    parallel.initialize(f"127.0.0.1:{port}", 2, process_id)
    from diffjax import train

    train.train(tiny_config(data_dir), out, batches_fn=GlobalStream)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "devices":
        _devices(*args)
    elif mode == "host":
        _host(int(args[0]), int(args[1]), *args[2:])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
