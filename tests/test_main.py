"""``python -m diffjax.main`` as a user runs it: two processes of one run (the multi-host
start-up), ``--mode=sample`` and ``--mode=eval`` on what they trained, and the one config
loader that reads ``--config`` and its overrides.

The two-process run is checked against a second method: one process of the same config fed
the same global batch (both shards of the grain pipeline, concatenated in process order).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import _train_helpers as helpers
import _xla_flags
from diffjax import config_loading, data, train
from diffjax.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

REPO = helpers.REPO
NUM_STEPS = 6
TIMEOUT = 300
_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
import _train_helpers

def get_config():
    return _train_helpers.tiny_config({data_dir!r}, **{changes!r})
"""
CHANGES = {"training.num_steps": NUM_STEPS, "training.checkpoint_every": 3,
           "sampling.num_samples": 64, "sampling.num_steps": 8, "eval.num_samples": 256,
           "eval.batch_size": 128}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    _xla_flags.subprocess_env(env)
    return env


def _cli(config: str, workdir: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffjax.main", f"--config={config}",
                             f"--workdir={workdir}", *flags], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


class BothShards:
    """One process reading what two processes of the grain pipeline read, row for row: the
    global batch is process 0's rows then process 1's (the mesh's order)."""

    def __init__(self, config, process_index: int, process_count: int):
        assert (process_index, process_count) == (0, 1)
        self.shards = [train.default_batches(config, i, 2) for i in range(2)]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        parts = [next(shard) for shard in self.shards]
        return jax.tree_util.tree_map(lambda *rows: np.concatenate(rows), *parts)

    def get_state(self) -> bytes:
        return json.dumps([s.get_state().decode() for s in self.shards]).encode()

    def set_state(self, state: bytes) -> None:
        for shard, s in zip(self.shards, json.loads(state.decode())):
            shard.set_state(s.encode())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """The tiny config trained by two CLI processes, and by one process in this one."""
    root = tmp_path_factory.mktemp("main")
    data_dir = str(root / "data")
    data.load_arrays("moons", "train", data_dir, limit=1)  # built once, before the processes
    config = str(root / "tiny.py")
    with open(config, "w") as f:
        f.write(_CONFIG_FILE.format(tests=os.path.join(REPO, "tests"), data_dir=data_dir,
                                    changes=CHANGES))
    workdir, port = str(root / "two"), _free_port()
    procs = [_cli(config, workdir, f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}") for i in range(2)]
    one = str(root / "one")
    train.train(helpers.tiny_config(data_dir, **CHANGES), one, batches_fn=BothShards)
    return {"root": root, "config": config, "workdir": workdir, "one": one,
            "results": [_finish(p) for p in procs]}


def test_two_cli_processes_train_to_the_losses_of_one_process_with_the_same_global_batch(run):
    for status, _, err in run["results"]:
        assert status == 0, err[-3000:]
    two, one = helpers.losses(run["workdir"]), helpers.losses(run["one"])
    assert len(two) == NUM_STEPS
    np.testing.assert_allclose(two, one, rtol=1e-4)
    # One metrics file, written by process 0 alone: every step once.
    found = [os.path.join(d, n) for d, _, files in os.walk(run["workdir"]) for n in files
             if n.endswith(".jsonl")]
    assert found == [os.path.join(run["workdir"], "metrics.jsonl")]
    with open(found[0]) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, NUM_STEPS + 1))
    # Both processes saved their own data position in the last checkpoint.
    last = os.path.join(run["workdir"], "checkpoints", str(NUM_STEPS), "data")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(last))


def test_sample_and_eval_end_by_naming_their_outputs_and_the_metric_beside_its_floor(run):
    sample_dir, eval_dir = str(run["root"] / "sampled"), str(run["root"] / "evaluated")
    restore = f"--restore_from={run['workdir']}"
    procs = [_cli(run["config"], sample_dir, "--mode=sample", restore),
             _cli(run["config"], eval_dir, "--mode=eval", restore)]
    (s_status, s_out, s_err), (e_status, e_out, e_err) = [_finish(p) for p in procs]
    assert s_status == 0, s_err[-3000:]
    assert e_status == 0, e_err[-3000:]

    npz = re.search(r"samples: (\S+\.npz)", s_out).group(1)
    grid = re.search(r"grid: +(\S+\.png)", s_out).group(1)
    assert os.path.dirname(npz) == os.path.join(sample_dir, "samples") and os.path.isfile(grid)
    samples = np.load(npz)["x"]
    assert samples.shape == (CHANGES["sampling.num_samples"], 2)
    assert f"{np.isfinite(samples).all(axis=1).sum()} of {len(samples)} finite" in s_out

    metrics_file = re.search(r"metrics: (\S+)", e_out).group(1)
    with open(metrics_file) as f:
        record = json.loads(f.readlines()[-1])
    assert record["step"] == NUM_STEPS and record["mode"] == "eval"
    for name in ("sliced_wasserstein", "mmd"):  # the default metrics of 2-D points
        printed = re.search(rf"{name} = (\S+) +\(floor: (\S+)\)", e_out)
        assert printed, e_out
        value, floor = map(float, printed.groups())
        assert value == pytest.approx(record[name], rel=1e-4)
        assert floor == pytest.approx(record[f"{name}_floor"], rel=1e-4)


def test_a_config_error_of_a_multi_process_run_exits_2_without_waiting_for_the_peers(run):
    # No process 1 ever starts: the check must come before joining the cluster.
    proc = _cli(run["config"], str(run["root"] / "bad"), "--config.optim.optimizer=sgd",
                f"--coordinator_address=127.0.0.1:{_free_port()}", "--num_processes=2",
                "--process_id=0")
    status, _, err = _finish(proc)
    assert status == 2 and "Traceback" not in err, err[-3000:]
    assert "config.optim.optimizer='sgd' is not valid" in err and "adam, adamw" in err


# --------------------------------------------------------------------------- the loader
def _get_config(path: str, arg=None):
    """The config file's own ``get_config``, imported directly (the second method)."""
    spec = importlib.util.spec_from_file_location("_direct", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def test_loader_gives_the_files_own_config_with_a_recipe_argument_and_overrides():
    path = os.path.join(REPO, "configs", "digits.py")
    direct = _get_config(path, "ddpm")
    assert config_loading.load(f"{path}:ddpm").to_dict() == direct.to_dict()
    direct.training.num_steps, direct.optim.lr, direct.sampling.sampler = 7, 0.5, "ddim"
    as_strings = config_loading.load(f"{path}:ddpm", ["training.num_steps=7",
                                                     "--config.optim.lr=0.5",
                                                     "sampling.sampler=ddim"])
    as_values = config_loading.load(f"{path}:ddpm", {"training.num_steps": 7, "optim.lr": 0.5,
                                                    "sampling.sampler": "ddim"})
    assert as_strings.to_dict() == as_values.to_dict() == direct.to_dict()
    assert isinstance(as_strings.training.num_steps, int)


@pytest.mark.parametrize("spec, overrides, named", [
    ("configs/toy2d.py", ["trainig.num_steps=3"], "did you mean config.training?"),
    ("configs/toy2d.py", {"training.num_step": 3}, "did you mean config.training.num_steps?"),
    ("configs/toy2d.py", ["training.num_steps=many"], "config.training.num_steps=many"),
    ("configs/nope.py", [], "no such config file 'configs/nope.py'"),
])
def test_loader_refuses_bad_files_keys_and_values_in_one_line(spec, overrides, named,
                                                              monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as excinfo:
        config_loading.load(spec, overrides)
    assert named in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_loader_lets_a_sweep_switch_arch_and_set_its_keys_but_the_result_stays_locked():
    path = os.path.join(REPO, "configs", "toy2d.py")
    assert "ch" not in _get_config(path).model  # an MLP config: no U-Net width
    config = config_loading.load(path, {"model.arch": "unet", "model.ch": 16})
    assert (config.model.arch, config.model.ch) == ("unet", 16)
    with pytest.raises(AttributeError):
        config.model.not_a_key = 1
