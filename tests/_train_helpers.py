"""Helpers for tests/test_train.py, and the runs that need a process of their own.

As a script (from the repository root)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python tests/_train_helpers.py devices OUT DATA_DIR [RUN,...]    # some of DEVICE_RUNS
    python tests/_train_helpers.py host PORT PROCESS_ID OUT DATA_DIR     # one per process
    python tests/_train_helpers.py paper OUT

``devices`` trains the tiny config on 8 simulated CPU devices with jit (replicated and FSDP
parameters, dropout on), with pmap (dropout off and on), and with 2 accumulated
micro-batches per update under both; ``host`` is one of two processes of a multi-host run
fed by :class:`GlobalStream`, trained with jit and then with pmap. Each run leaves
``metrics.jsonl`` in its own directory under OUT. ``paper`` takes one train step of
configs/cifar10_ddpmpp.py at full size (batch 2) on mock CIFAR-10 and writes
``OUT/paper.json``. ``sampler OUT DATA_DIR`` (under 8 simulated devices) writes
:func:`sample_twice`'s samples to ``OUT`` (npz).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

import _xla_flags

# Eight simulated CPU devices. Their collectives wait for all eight threads. On a loaded
# 2-core machine one of them intermittently never arrives (a deadlock inside XLA:CPU, see
# diffjax.training.backends.simulated_devices; reproduced under load with every device
# thread parked for minutes), so waiting longer does not help: XLA aborts after a minute
# and tests/test_train.py reruns the helper.
EIGHT_DEVICES = _xla_flags.subprocess_flags(
    "--xla_force_host_platform_device_count=8",
    "--xla_cpu_collective_call_terminate_timeout_seconds=60",
    "--xla_cpu_collective_timeout_seconds=60")
# What XLA prints when it aborts a collective whose participants never all arrived.
RENDEZVOUS_ABORT = "Termination timeout for"
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


def power_ema_config(data_dir: str, **changes: Any) -> ml_collections.ConfigDict:
    """:func:`tiny_config` with EDM2's power-function EMAs (snapshots every 3 steps), 24
    steps, checkpoints at 12 and 24; tests of post-hoc EMA and autoguidance share it (and so
    its compiled step, through the ``xla_cache`` fixture)."""
    return tiny_config(data_dir, **{
        "training.num_steps": 24, "training.checkpoint_every": 12, "training.ema": "power",
        "training.ema_snapshot_every": 3, "training.log_every": 24,
        "optim.schedule": "constant", "optim.lr": 1e-2, **changes})


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
        return {"x": self.x[picked], "cond": {"label": self.labels[picked]}}

    def get_state(self) -> bytes:
        return json.dumps({"index": self.index}).encode()

    def set_state(self, state: bytes) -> None:
        self.index = json.loads(state.decode())["index"]

    def start_prefetch(self) -> None:  # called by grain's checkpoint handler on restore
        pass


# The 8-device runs of ``devices``: jit runs with dropout, whose masks too are drawn for
# the global batch; pmap draws masks per device, so it is compared with and without
# dropout; two micro-batches per update, split over the devices, give the one-batch numbers.
DEVICE_RUNS = {
    "jit": {"model.dropout": 0.2},
    "fsdp": {"model.dropout": 0.2, "parallel.param_sharding": "fsdp"},
    "pmap": {"parallel.backend": "pmap"},
    "pmap_dropout": {"model.dropout": 0.2, "parallel.backend": "pmap"},
    "jit_accum": {"optim.grad_accum_steps": 2},
    "pmap_accum": {"optim.grad_accum_steps": 2, "parallel.backend": "pmap"},
}


def device_run_done(out: str, name: str) -> str:
    """The file :func:`_devices` writes once run ``name`` has finished (and, for ``fsdp``,
    its kernel layout is written)."""
    return os.path.join(out, f"{name}.done")


def _devices(out: str, data_dir: str, names: str | None = None) -> None:
    """Every run of :data:`DEVICE_RUNS` (or those of the comma-separated ``names``, in that
    order) under ``out``, one after the other in this process, each marked done by
    :func:`device_run_done` when it has finished; and the FSDP layout of the largest kernel."""
    import jax

    from diffjax import train

    assert jax.device_count() == 8, jax.devices()
    for run in (list(DEVICE_RUNS) if names is None else names.split(",")):
        train.train(tiny_config(data_dir, **DEVICE_RUNS[run]), os.path.join(out, run))
        if run == "fsdp":
            _fsdp_specs(out, data_dir)
        open(device_run_done(out, run), "w").close()


def _fsdp_specs(out: str, data_dir: str) -> None:
    """The FSDP run really splits parameters: record the layout of its largest kernel."""
    import jax

    from diffjax import parallel, train
    setup = train.build(tiny_config(data_dir))
    _, shardings = train.setup_state(setup, tiny_config(data_dir, **DEVICE_RUNS["fsdp"]),
                                     parallel.make_mesh())
    specs = {jax.tree_util.keystr(p): str(s.spec)
             for p, s in jax.tree_util.tree_flatten_with_path(shardings.params)[0]}
    with open(os.path.join(out, "fsdp_specs.json"), "w") as f:
        json.dump(specs, f)


def _host(port: int, process_id: int, out: str, data_dir: str) -> None:
    from diffjax import parallel

    parallel.initialize(f"127.0.0.1:{port}", 2, process_id)
    from diffjax import train

    for backend in ("jit", "pmap"):
        train.train(tiny_config(data_dir, **{"parallel.backend": backend}),
                    os.path.join(out, backend), batches_fn=GlobalStream)


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``configs/<name>.py``'s ``get_config(arg)`` through the one config loader (unlocked)."""
    from diffjax import config_loading

    spec = os.path.join(REPO, "configs", f"{name}.py") + (f":{arg}" if arg else "")
    return config_loading.load(spec, lock=False)


def paper_setup(name: str, data_dir: str):
    """A paper-scale config (batch 2), one mock CIFAR-10 batch, its setup, mesh and state
    shapes/shardings."""
    import tensorflow_datasets as tfds

    from diffjax import config_validation, parallel, train

    config = load_config(name)
    config.data.update(data_dir=data_dir, batch_size=2, num_workers=0)
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        info = config_validation.validate(config)
        batch = next(train.default_batches(config, 0, 1))
    setup = train.build(config, info)
    mesh = parallel.make_mesh()
    abstract, shardings = train.setup_state(setup, config, mesh)
    return config, info, batch, setup, mesh, abstract, shardings


def _paper(out: str) -> None:
    import jax

    from diffjax import train
    from diffjax.training import backends

    config, info, batch, setup, mesh, _, shardings = paper_setup("cifar10_ddpmpp", out)
    state = jax.jit(lambda: train.init_state(setup, config.seed), out_shardings=shardings)()
    compiled = backends.compile_step(lambda axis: train.make_train_step(setup, axis),
                                     backend="jit", mesh=mesh, state_sharding=shardings)
    new_state, metrics = compiled.step(state, compiled.put_batch(batch), None)
    result = {"shape": list(info.shape), "batch_shape": list(batch["x"].shape),
              "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(state.params))),
              "step": int(new_state.step),
              **{k: float(metrics[k]) for k in ("loss", "grad_norm", "skipped")}}
    with open(os.path.join(out, "paper.json"), "w") as f:
        json.dump(result, f)


def sample_twice(data_dir: str) -> dict[str, np.ndarray]:
    """Conditional samples (16 rows) of the tiny config from two parameter sets through one
    :class:`diffjax.train.Sampler`; with how often it was traced and over how many devices
    its output was split; and the NLL of 16 test points (also split over the devices)."""
    import jax

    from diffjax import train

    config = tiny_config(data_dir, **{"sampling.num_steps": 8})
    setup = train.build(config)
    sampler = train.Sampler(setup, config.sampling, 16)
    labels = np.arange(16, dtype=np.int32) % setup.data_info.num_classes
    params = train.init_state(setup, 0).ema_params
    out = {}
    # The network's last layer starts at zero; shifted weights give a non-trivial model.
    for name, shift in (("a", 0.05), ("b", 0.1)):
        shifted = jax.tree_util.tree_map(lambda p: p + shift, params)  # noqa: B023
        samples = sampler(shifted, jax.random.PRNGKey(3), labels)
        out[name] = np.asarray(jax.device_get(samples))
        out["devices"] = np.asarray(len(samples.sharding.device_set))
    out["traces"] = np.asarray(sampler.traces)
    # The likelihood of 16 test points, split over the devices like the samples.
    from diffjax.training import evaluation

    config.eval.likelihood_examples = 16
    nll = evaluation.likelihood_metrics(setup, jax.tree_util.tree_map(lambda p: p + 0.01, params),
                                        config, ["nll"])
    out["nll"] = np.asarray(nll["nll"])
    return out


def _sampler(out: str, data_dir: str) -> None:
    import jax

    assert jax.device_count() == 8, jax.devices()
    np.savez(out, **sample_twice(data_dir))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "devices":
        _devices(*args)
    elif mode == "host":
        _host(int(args[0]), int(args[1]), *args[2:])
    elif mode == "paper":
        _paper(*args)
    elif mode == "sampler":
        _sampler(*args)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
