"""Runs that survive: real ``python -m diffjax.main`` processes killed with SIGKILL and SIGTERM
at chosen moments (mid-step, mid-checkpoint-write, before the first checkpoint, in the final
save), partial and broken checkpoints, non-finite steps, bad command lines, unusable workdirs
and data that is not there. Every resumed run is compared with a straight run of the same
command, step for step.

Moments are chosen with a test driver (:data:`_DRIVER`) that runs ``diffjax.main`` unchanged
but can hold a step (after its metrics record is written) or hold orbax's commit of a step's
checkpoint (after its files are written into the temporary directory, before the rename), and
says so in a marker file; the test then signals the process. The processes share one XLA
compilation cache, and the straight run is made once per session (shared by xdist workers).

Proven elsewhere, not repeated here. tests/test_train.py:
``test_sigterm_then_resume_reproduces_the_straight_run_exactly`` (SIGTERM inside
``train.train``), ``test_resume_skips_a_broken_newest_checkpoint_and_keeps_it`` (truncated
array files), ``test_nonfinite_skip_leaves_params_ema_and_optimizer_as_they_were`` (a NaN
batch; also "stop" naming the step), ``test_cli_refuses_a_batch_that_does_not_split_over_the_
devices`` (8 devices, through the CLI), ``test_a_workdir_of_another_model_is_refused_and_left_
untouched`` (also without config.json). tests/test_data.py:
``test_damaged_cache_is_detected_warned_and_rebuilt`` (bundled-data cache),
``test_unprepared_catalogue_dataset_raises_with_preparation_hint``.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import _train_helpers as helpers
import _xla_flags
from diffjax import checkpoint, data, parallel, train

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

REPO = helpers.REPO
NUM_STEPS, CHECKPOINT_EVERY = 40, 10
TIMEOUT = 120

# diffjax.main, with test-only holds at chosen moments (environment variables):
#   HOLD_STEP=N     after step N's metrics record is written, say so and sleep
#   HOLD_SAVE=N     after checkpoint N's files are in orbax's temporary directory, before
#                   the rename that commits it, say so and sleep (a slow disk)
#   STEP_DELAY=S    sleep S seconds after every metrics record (slow steps)
# "Say so" is writing the MARKER file.
_DRIVER = r"""
import asyncio, os, time
from orbax.checkpoint._src.path import atomicity
from diffjax import reporting

env = os.environ
marker = env["MARKER"]

def say(what):
    with open(marker + ".tmp", "w") as f:
        f.write(what)
    os.replace(marker + ".tmp", marker)

write = reporting.MetricsWriter.write
def held_write(self, step, metrics, prefix=""):
    write(self, step, metrics, prefix)
    time.sleep(float(env.get("STEP_DELAY", 0)))
    if str(step) == env.get("HOLD_STEP"):
        say(f"holding step {step}")
        time.sleep(TIMEOUT)
reporting.MetricsWriter.write = held_write

finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def held_finalize(self):
    if self.get_final().name == env.get("HOLD_SAVE"):
        say(str(self.get()))
        await asyncio.sleep(TIMEOUT)
    await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = held_finalize

from absl import app
from diffjax import main
app.run(main.main, flags_parser=main._parse_flags)
""".replace("TIMEOUT", str(TIMEOUT))

_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
import _train_helpers

def get_config():
    return _train_helpers.tiny_config({data_dir!r}, **{changes!r})
"""


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> str:
    """A directory all xdist workers of this session share (data, configs)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "reliability_shared"
    path.mkdir(exist_ok=True)
    return str(path)


def _env(shared: str, **extra: str) -> dict:
    # The session's compilation cache reaches diffjax.main through $DIFFJAX_JAX_CACHE
    # (tests/conftest.py); main sets JAX's cache from it, overriding JAX's own variables.
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    _xla_flags.subprocess_env(env)
    env.update(extra)
    return env


def _config_file(shared: str, name: str, **changes) -> str:
    """A config file for the CLI: the tiny config of tests/_train_helpers.py with ``changes``."""
    changes = {"training.num_steps": NUM_STEPS, "training.checkpoint_every": CHECKPOINT_EVERY,
               **changes}
    path = os.path.join(shared, f"{name}.py")
    text = _CONFIG_FILE.format(tests=os.path.join(REPO, "tests"),
                               data_dir=os.path.join(shared, "data"), changes=changes)
    with open(path + f".{os.getpid()}", "w") as f:
        f.write(text)
    os.replace(path + f".{os.getpid()}", path)
    return path


def _command(config: str, workdir: str, *flags: str, driver: bool = False) -> list[str]:
    program = ["-c", _DRIVER] if driver else ["-m", "diffjax.main"]
    return [sys.executable, *program, f"--config={config}", f"--workdir={workdir}", *flags]


def _run(shared: str, config: str, workdir: str, *flags: str) -> subprocess.CompletedProcess:
    """``python -m diffjax.main --config=config --workdir=workdir flags...``, to its end."""
    return subprocess.run(_command(config, workdir, *flags), cwd=REPO, env=_env(shared),
                          capture_output=True, text=True, timeout=TIMEOUT)


def _start_held(shared: str, config: str, workdir: str, marker: str, **hold: str):
    """The same command through the driver, holding where ``hold`` says."""
    return subprocess.Popen(_command(config, workdir, driver=True), cwd=REPO,
                            env=_env(shared, MARKER=marker, **hold), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}:\n"
                                 f"{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()  # no held process outlives its test
            proc.communicate()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> tuple[str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=TIMEOUT)
    return out, err


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _steps(workdir: str) -> list[int]:
    """Complete checkpoints on disk (orbax's committed step directories)."""
    root = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
    return sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []


def _records(workdir: str) -> list[str]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [line for line in f if line.strip()]


def _last_step(workdir: str) -> int:
    """The newest step in metrics.jsonl (0 if none), also while a run is writing it."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.endswith("\n")]  # complete records only
    return max((json.loads(line)["step"] for line in lines), default=0)


def _restore(config_changes: dict, workdir: str, step: int):
    """The train state in ``workdir``'s checkpoint ``step`` of the tiny config."""
    config = helpers.tiny_config("", **{"training.num_steps": NUM_STEPS, **config_changes})
    recipe = train.build(config, data.info("moons"))
    abstract, _ = train.setup_state(recipe, config, parallel.make_mesh())
    reader = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        return reader.restore(step, abstract)
    finally:
        reader.close()


def _assert_trees_equal(a, b) -> None:
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="session")
def straight(shared) -> dict:
    """The uninterrupted run of the tiny config (made once; other workers wait for it)."""
    workdir = os.path.join(shared, "straight")
    config = _config_file(shared, "tiny")
    with open(os.path.join(shared, "straight.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(workdir, "done")):
            _ok(_run(shared, config, workdir))
            open(os.path.join(workdir, "done"), "w").close()
    return {"config": config, "workdir": workdir, "losses": helpers.losses(workdir),
            "state": _restore({}, workdir, NUM_STEPS)}


# --------------------------------------------------------------------------- 1. kill -9
def test_kill_9_at_four_moments_then_the_same_command_equals_the_straight_run(straight, shared,
                                                                               tmp_path):
    config, workdir = straight["config"], str(tmp_path / "run")
    marker = str(tmp_path / "marker")

    def killed_while(what: str, **hold: str) -> str:
        if os.path.exists(marker):
            os.remove(marker)
        proc = _start_held(shared, config, workdir, marker, **hold)
        _wait_for(lambda: os.path.exists(marker), proc, what)
        held = open(marker).read()
        if "HOLD_STEP" in hold:  # let the step's periodic checkpoint commit first
            done = int(hold["HOLD_STEP"]) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
            if done:
                _wait_for(lambda: done in _steps(workdir), proc, f"checkpoint {done}")
        _, err = _kill(proc)
        assert proc.returncode == -signal.SIGKILL, err[-3000:]
        return held

    # a) Before the first checkpoint: the rerun starts afresh, dropping records 1-5.
    killed_while("step 5", HOLD_STEP="5")
    assert _steps(workdir) == [] and _last_step(workdir) == 5
    # b) While checkpoint 20 is being written: its files are in the temporary directory,
    #    the commit (rename) has not happened.
    partial = killed_while("checkpoint 20 written, not committed", HOLD_SAVE="20")
    assert os.path.isdir(partial) and os.path.basename(partial).startswith("20.")
    assert _steps(workdir) == [10] and _last_step(workdir) >= 20
    # c) Mid-run, resumed from 10: killed holding step 25 (checkpoint 20 committed).
    killed_while("step 25", HOLD_STEP="25")
    assert _steps(workdir) == [10, 20] and _last_step(workdir) == 25
    # d) In the final save, which the run waits for before it exits.
    killed_while("checkpoint 40 written, not committed", HOLD_SAVE="40")
    assert _steps(workdir)[-1] == 30 and _last_step(workdir) == 40

    result = _ok(_run(shared, config, workdir))
    assert "resuming from step 30" in result.stdout
    # Each unfinished save was reported by the run after it, and moved aside, not deleted.
    partial_40 = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "40" + checkpoint.PARTIAL_SUFFIX)
    assert f"{partial_40} is a checkpoint save that never completed" in result.stderr
    kept = sorted(os.listdir(os.path.join(workdir, checkpoint.BROKEN_DIR)))
    assert [name.split(".")[0] for name in kept] == ["20", "40"]
    assert all(os.listdir(os.path.join(workdir, checkpoint.BROKEN_DIR, name, "state"))
               for name in kept)
    assert not checkpoint.Checkpointer(workdir, read_only=True).find_partial_saves()

    np.testing.assert_array_equal(helpers.losses(workdir), straight["losses"])
    _assert_trees_equal(_restore({}, workdir, NUM_STEPS), straight["state"])


# --------------------------------------------------------------------------- 2. SIGTERM
def test_sigterm_checkpoints_the_current_step_exits_0_and_the_rerun_resumes_there(
        straight, shared, tmp_path):
    config, workdir = straight["config"], str(tmp_path / "run")
    proc = _start_held(shared, config, workdir, str(tmp_path / "marker"), STEP_DELAY="0.1")
    _wait_for(lambda: _last_step(workdir) >= 12, proc, "step 12")
    out, err = _kill(proc, signal.SIGTERM)
    assert proc.returncode == 0, err[-3000:]
    stopped = _last_step(workdir)
    assert stopped < NUM_STEPS and stopped in _steps(workdir)
    assert f"stop requested: checkpointed step {stopped}" in out
    before = _records(workdir)

    result = _ok(_run(shared, config, workdir))
    assert f"resuming from step {stopped}" in result.stdout
    # The stopped run's records stand as written (their timings too): nothing was redone.
    assert _records(workdir)[:stopped] == before
    np.testing.assert_array_equal(helpers.losses(workdir), straight["losses"])
    _assert_trees_equal(_restore({}, workdir, NUM_STEPS), straight["state"])


# --------------------------------------------------------------------------- 3. broken
def test_a_broken_checkpoint_is_kept_even_when_the_resumed_run_never_saves_its_step(
        straight, shared, tmp_path):
    # keep_checkpoints (3) prunes old steps: a broken one that the resumed run moves past
    # without saving its step again (here 40, with saves every 3 steps to 50) would go too.
    workdir = str(tmp_path / "run")
    shutil.copytree(straight["workdir"], workdir)
    state_dir = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "40", "state")
    os.remove(os.path.join(state_dir, "_METADATA"))
    config = _config_file(shared, "longer", **{"training.num_steps": 50,
                                               "training.checkpoint_every": 3})
    result = _ok(_run(shared, config, workdir))
    assert "BrokenCheckpointWarning: checkpoint 40 in" in result.stderr
    assert "resuming from step 30" in result.stdout and _steps(workdir) == [45, 48, 50]
    kept = os.listdir(os.path.join(workdir, checkpoint.BROKEN_DIR))
    assert len(kept) == 1 and kept[0].startswith("40.")
    assert sorted(os.listdir(os.path.join(workdir, checkpoint.BROKEN_DIR, kept[0], "state"))) \
        == sorted(n for n in os.listdir(os.path.join(straight["workdir"], "checkpoints", "40",
                                                     "state")) if n != "_METADATA")


# --------------------------------------------------------------------------- 4. non-finite
def _finite(tree) -> bool:
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(tree))


def test_nonfinite_steps_are_skipped_and_counted_or_stop_the_run_and_never_reach_a_checkpoint(
        shared, tmp_path):
    # A learning rate of 1e38 sends the weights to ~1e37 in step 1; from step 2 on every
    # forward pass overflows to a non-finite loss.
    changes = {"optim.lr": 1e38, "training.num_steps": 6, "training.checkpoint_every": 1}
    skip = str(tmp_path / "skip")
    result = _ok(_run(shared, _config_file(shared, "huge_lr", **changes), skip))
    assert "Traceback" not in result.stderr
    with open(os.path.join(skip, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["skipped"] for r in records] == [0, 1, 1, 1, 1, 1]
    assert [r["nonfinite_count"] for r in records] == [0, 1, 2, 3, 4, 5]
    kept = [_restore(changes, skip, step) for step in _steps(skip)]
    assert _steps(skip) == [4, 5, 6] and [int(s.nonfinite_count) for s in kept] == [3, 4, 5]
    for state in kept:  # the state of step 1, finite, in every checkpoint after it
        assert _finite((state.params, state.ema_params, state.opt_state))
        _assert_trees_equal((state.params, state.ema_params, state.opt_state),
                            (kept[0].params, kept[0].ema_params, kept[0].opt_state))

    stop = str(tmp_path / "stop")
    config = _config_file(shared, "huge_lr_stop", **changes, **{"training.nonfinite": "stop"})
    result = _run(shared, config, stop)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite loss at step 2" in errors[0], result.stderr[-3000:]
    assert _steps(stop) == [1] and _finite(_restore(changes, stop, 1))


# --------------------------------------------------------------------------- 5. config
@pytest.mark.parametrize("flag,named", [
    ("--config.trainig.num_steps=5", ["config.trainig", "did you mean config.training?"]),
    ("--config.sampling.sampler=heunn",
     ["config.sampling.sampler='heunn'", "did you mean 'heun'?", "euler, heun, rk4"]),
    ("--config.training.num_steps=-5", ["config.training.num_steps=-5", "must be an int > 0"]),
    ("--config.training.num_steps=many", ["config.training.num_steps", "many"]),
    # On rectified_flow alpha(1) = 0: an eps model cannot give x0_hat at the sampler's t_max.
    ("--config.model.target=eps",
     ["target 'eps'", "t_max=1.0", "rectified_flow", "'velocity', 'v' or 'x0'"]),
])
def test_config_errors_fail_in_seconds_with_one_line_naming_key_value_and_choices(
        straight, shared, tmp_path, flag, named):
    workdir = tmp_path / "run"
    start = time.monotonic()
    result = _run(shared, straight["config"], str(workdir), flag)
    elapsed = time.monotonic() - start
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in named), result.stderr[-3000:]
    assert elapsed < 30  # imports only; a run would compile and train first
    assert not workdir.exists()


# --------------------------------------------------------------------------- 6. workdir
def _tree_digest(root: str) -> dict[str, tuple[int, int]]:
    return {os.path.join(d, n): (os.stat(os.path.join(d, n)).st_size,
                                 os.stat(os.path.join(d, n)).st_mtime_ns)
            for d, _, files in os.walk(root) for n in files}


def test_cli_refuses_a_workdir_holding_another_model_and_touches_nothing(straight, shared):
    workdir = straight["workdir"]
    before = _tree_digest(workdir)
    result = _run(shared, straight["config"], workdir, "--config.model.hidden=16")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.hidden: 32 -> 16" in result.stderr and "refusing" in result.stderr
    assert _tree_digest(workdir) == before


@pytest.mark.parametrize("how", ["read_only_directory", "file_in_the_way"])
def test_cli_reports_an_unwritable_workdir_before_training(straight, shared, tmp_path, how):
    parent = tmp_path / "parent"
    if how == "read_only_directory":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        parent.mkdir()
        parent.chmod(0o500)
    else:
        parent.write_text("a file where the workdir's parent should be")
    try:
        result = _run(shared, straight["config"], str(parent / "run"))
    finally:
        if parent.is_dir():
            parent.chmod(0o700)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--workdir={parent / 'run'} is not writable" in errors[0]


# --------------------------------------------------------------------------- 7. data
def test_cli_says_how_to_prepare_a_missing_tfds_dataset(shared, tmp_path):
    empty = tmp_path / "tfds"
    result = subprocess.run(
        [sys.executable, "-m", "diffjax.main", "--config=configs/digits.py",
         f"--workdir={tmp_path / 'run'}", "--config.data.dataset=mnist",
         f"--config.data.data_dir={empty}", "--config.model.attn_resolutions=14"],
        cwd=REPO, env=_env(shared), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error = result.stderr[result.stderr.index("error: "):]
    assert error.startswith("error: tfds dataset 'mnist' is not prepared")
    assert f"tfds build mnist --data_dir={empty} --file_format=array_record" in error
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_metrics_line_torn_by_a_power_loss_is_dropped_and_never_glued_to_the_next(tmp_path):
    """kill -9 cannot tear a line (each record is one flushed write), a power loss can: the
    torn tail is left out when read, dropped with a warning on resume, and an appending run
    starts its first record on a new line."""
    from diffjax import reporting
    path = tmp_path / reporting.METRICS_FILE
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    assert [r["step"] for r in reporting.read_metrics(str(tmp_path))] == [1, 2]
    writer = reporting.MetricsWriter(str(tmp_path))  # --mode=eval appends
    writer.write(9, {"fd": 1.0})
    writer.close()
    assert [r["step"] for r in reporting.read_metrics(str(tmp_path))] == [1, 2, 9]
    with pytest.warns(UserWarning, match="not complete JSON"):
        reporting.MetricsWriter(str(tmp_path), resume_step=2).close()
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'


def test_path_keywords_are_settable_on_any_config_and_checked_against_the_named_path():
    """``--config.path.<kw>`` works although the config file never set ``kw``; a keyword the
    named path does not take is refused, naming the path's keywords (no compute)."""
    from diffjax import config_validation, configs, paths
    assert config_validation.is_known_override("path.t_max") is None
    config = configs.apply_recipe(configs.default_config(), "flow")
    with config.unlocked():
        config.path.t_max = 0.999
    assert configs.path_kwargs(config.path) == {"t_max": 0.999}
    assert paths.get(config.path.name, **configs.path_kwargs(config.path)).t_max == 0.999
    with config.unlocked():
        config.path.sigma_max = 3.0
    with pytest.raises(config_validation.ConfigError, match=r"sigma_max.*t_min, t_max"):
        config_validation.validate(config)
    # Switching recipes resets the path's keywords to the new path's defaults.
    config = configs.apply_recipe(config, "score_ve", sigma_max=3.0)
    assert configs.path_kwargs(config.path) == {"sigma_max": 3.0}


# --------------------------------------------------------------------------- 8. restore
class _Position:
    """A checkpointable stand-in for the data iterator: its position is one int."""

    def __init__(self, index: int = 0):
        self.index = index

    def get_state(self) -> bytes:
        return json.dumps({"index": self.index}).encode()

    def set_state(self, state: bytes) -> None:
        self.index = json.loads(state.decode())["index"]

    def start_prefetch(self) -> None:
        pass


def _saved_steps(workdir: str, steps=(10, 20, 30)) -> tuple:
    """Checkpoints of a small pytree whose leaf holds its step; returns its abstract state."""
    writer = checkpoint.Checkpointer(workdir, async_save=False)
    for step in steps:
        writer.save(step, {"w": np.full((3,), float(step), np.float32)}, _Position(step))
    writer.close()
    return {"w": jax.ShapeDtypeStruct((3,), np.float32)}


def _reader(workdir: str, monkeypatch, failures: dict, sleeps: list) -> checkpoint.Checkpointer:
    """A reader whose reads of step s raise ``failures[s].pop(0)`` while that list lasts."""
    reader = checkpoint.Checkpointer(workdir, read_only=True, retries=3, backoff_s=0.25)
    real = reader._manager.restore

    def flaky(step, *args, **kwargs):
        if failures.get(step):
            raise failures[step].pop(0)
        return real(step, *args, **kwargs)

    monkeypatch.setattr(reader._manager, "restore", flaky)
    monkeypatch.setattr(checkpoint.time, "sleep", sleeps.append)
    return reader


def test_transient_io_errors_are_retried_with_backoff_and_restore_the_newest_step(
        tmp_path, monkeypatch):
    abstract = _saved_steps(str(tmp_path))
    eio = OSError(errno.EIO, "Input/output error")
    # orbax wraps what the file system raised: the cause decides, not the wrapper.
    wrapped = ValueError("error reading checkpoint")
    wrapped.__cause__ = TimeoutError("read timed out")
    sleeps: list = []
    reader = _reader(str(tmp_path), monkeypatch, {30: [eio, wrapped]}, sleeps)
    position = _Position()
    with pytest.warns(checkpoint.BrokenCheckpointWarning, match="retrying"):
        state, step = reader.restore_latest(abstract, position)
    reader.close()
    assert step == 30 and position.index == 30 and float(state["w"][0]) == 30.0
    assert sleeps == [0.25, 0.5] and reader.broken_steps == []


def test_io_errors_that_outlast_the_retries_stop_instead_of_restoring_an_older_step(
        tmp_path, monkeypatch):
    abstract = _saved_steps(str(tmp_path))
    sleeps: list = []
    failures = {30: [OSError(errno.ETIMEDOUT, "timed out") for _ in range(10)]}
    reader = _reader(str(tmp_path), monkeypatch, failures, sleeps)
    with pytest.raises(checkpoint.CheckpointReadError, match="checkpoint 30.*not falling back"):
        with pytest.warns(checkpoint.BrokenCheckpointWarning):
            reader.restore_latest(abstract)
    reader.close()
    assert sleeps == [0.25, 0.5, 1.0] and reader.broken_steps == []
    assert len(failures[30]) == 10 - 4  # one read and three retries


def test_damage_still_falls_back_to_the_previous_step_without_retrying(tmp_path, monkeypatch):
    abstract = _saved_steps(str(tmp_path))
    sleeps: list = []
    damage = {30: [FileNotFoundError(errno.ENOENT, "no such file: array shard")]}
    reader = _reader(str(tmp_path), monkeypatch, damage, sleeps)
    with pytest.warns(checkpoint.BrokenCheckpointWarning, match="checkpoint 30 .*skipping"):
        state, step = reader.restore_latest(abstract)
    reader.close()
    assert (step, float(state["w"][0]), reader.broken_steps, sleeps) == (20, 20.0, [30], [])


@pytest.mark.parametrize("error, transient", [
    (OSError(errno.EIO, "io"), True), (OSError(errno.ESTALE, "stale handle"), True),
    (ConnectionResetError(), True), (ValueError("UNAVAILABLE: gcs backend"), True),
    (FileNotFoundError(errno.ENOENT, "missing"), False), (PermissionError(errno.EACCES, "no"),
                                                          False),
    (ValueError("DATA_LOSS: bad chunk"), False), (json.JSONDecodeError("bad", "{", 0), False),
])
def test_only_io_failures_that_may_pass_count_as_transient(error, transient):
    assert checkpoint.is_transient(error) is transient


def test_all_processes_restore_the_newest_step_every_one_of_them_can_read(tmp_path,
                                                                          monkeypatch):
    """Another process (simulated by the gather) does not list step 30 and finds step 20
    damaged: this process must restore 10 too, although 30 and 20 read fine here."""
    abstract = _saved_steps(str(tmp_path))
    other = [[10, 20], [checkpoint._DAMAGED], [checkpoint._OK]]
    gathered = []

    def gather(values):
        gathered.append(list(values))
        return [list(values), other.pop(0)]

    monkeypatch.setattr(parallel, "gather_ints", gather)
    reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    with pytest.warns(checkpoint.BrokenCheckpointWarning) as warned:
        state, step = reader.restore_latest(abstract)
    reader.close()
    assert step == 10 and float(state["w"][0]) == 10.0 and reader.broken_steps == [20]
    assert gathered == [[10, 20, 30], [checkpoint._OK], [checkpoint._OK]]
    assert any("[30] are not seen by every process" in str(w.message) for w in warned)
    assert parallel.common_values([[3, 1, 2], [2, 3], [5, 3, 2]]) == [2, 3]


def test_checkpoints_of_another_process_count_are_refused_not_skipped(tmp_path):
    abstract = _saved_steps(str(tmp_path), steps=(10,))
    data_dir = tmp_path / "checkpoints" / "10" / "data"
    # What a two-process run leaves: one data position per process.
    os.rename(data_dir / "process_0-of-1.json", data_dir / "process_0-of-2.json")
    shutil.copy(data_dir / "process_0-of-2.json", data_dir / "process_1-of-2.json")
    reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    with pytest.raises(checkpoint.WorkdirError, match="positions of 2 processes; this run has 1"):
        reader.restore_latest(abstract, _Position())
    reader.close()
    assert reader.broken_steps == []
    assert reader.restore(10, abstract)["w"][0] == 10.0  # the state itself is fine


@pytest.mark.parametrize("key, value", [("data.batch_size", 32), ("data.num_workers", 2),
                                        ("seed", 7), ("data.random_flip", True)])
def test_a_changed_data_loader_setting_refuses_to_resume_naming_it(tmp_path, key, value):
    old = helpers.tiny_config(str(tmp_path))
    checkpoint.write_config(str(tmp_path), old)
    group, _, name = key.rpartition(".")
    new = helpers.tiny_config(str(tmp_path))
    (new[group] if group else new)[name] = value
    with pytest.raises(checkpoint.WorkdirError, match=f"config.{key}: .* -> {value!r}"):
        checkpoint.check_compatible(str(tmp_path), new)
    checkpoint.check_compatible(str(tmp_path), new, resume=False)  # sampling may change them
    checkpoint.check_compatible(str(tmp_path), old)
