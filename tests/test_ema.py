"""Post-hoc EMA in training: power-function EMAs in the step, snapshots, exact resume,
reconstruction (python -m diffjax.ema) and sampling it (config.sampling.ema).

Ground truth: the parameters after every update of the same run, recorded on the host, and
the closed-form power-function weights (:func:`diffjax.phema.weights`) applied to them.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest

import _train_helpers as helpers
from diffjax import checkpoint, config_validation, ema, phema, train
from diffjax.errors import ConfigError, WorkdirError
from diffjax.training import backends, power_ema

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

STEPS, EVERY, CKPT = 24, 3, 12  # helpers.power_ema_config


class _Raising(helpers.GlobalStream):
    """The stream, failing at batch ``at`` (a run killed between checkpoints)."""

    at = None

    def __next__(self):
        if self.index + 1 == self.at:
            raise RuntimeError("killed")
        return super().__next__()


@pytest.fixture(scope="module")
def run(tmp_path_factory, xla_cache):
    """A power-EMA run of 24 steps, and the parameters after each of its updates (recorded
    on the host by wrapping the loop's compiled step)."""
    root = tmp_path_factory.mktemp("ema")
    data_dir = str(root / "data")
    config = helpers.power_ema_config(data_dir)
    workdir = str(root / "run")
    history, compile_step = [], backends.compile_step

    def recording(*args, **kwargs):
        compiled = compile_step(*args, **kwargs)

        def step(state, batch, frozen):
            state, metrics = compiled.step(state, batch, frozen)
            history.append(jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                                  state.params))
            return state, metrics

        return dataclasses.replace(compiled, step=step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "compile_step", recording)
        final = train.train(config, workdir, batches_fn=helpers.GlobalStream)
    assert len(history) == STEPS
    return {"config": config, "workdir": workdir, "final": final, "history": history,
            "data_dir": data_dir, "root": root}


def _average(history, sigma_rel, end):
    """sum_tau w_end(tau) theta_tau, the power-function EMA in closed form (float64)."""
    w = phema.weights(phema.sigma_rel_to_gamma(sigma_rel), end)
    return jax.tree_util.tree_map(lambda *leaves: sum(c * a for c, a in zip(w, leaves)),
                                  *history[:end])


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_tracked_power_emas_are_the_closed_form_averages_of_the_updates(run):
    for i, sigma_rel in enumerate(phema.DEFAULT_SIGMA_RELS):
        truth = _average(run["history"], sigma_rel, STEPS)
        assert _max_diff(run["final"].power_ema[i], truth) < 1e-5
    # The two lengths really differ here (the test would not see a swapped gamma otherwise).
    assert _max_diff(run["final"].power_ema[0], run["final"].power_ema[1]) > 1e-3


def test_snapshots_every_n_steps_hold_the_emas_at_their_step(run):
    steps = power_ema.snapshot_steps(run["workdir"])
    assert steps == list(range(EVERY, STEPS + 1, EVERY))
    rels, updates, emas = power_ema.read_snapshot(run["workdir"], 9, run["final"].params)
    np.testing.assert_allclose(rels, phema.DEFAULT_SIGMA_RELS)
    assert updates == 9
    assert _max_diff(emas[1], _average(run["history"], 0.10, 9)) < 1e-5


def test_reconstruction_equals_a_tracked_ema_and_approximates_an_untracked_one(run):
    results = ema.reconstruct(run["workdir"], [0.10, 0.075], step=STEPS)
    assert all(os.path.exists(r[1]) for r in results)
    like = run["final"].params
    tracked = power_ema.load_reconstruction(run["workdir"], "sigma_rel:0.1", like)[0]
    assert _max_diff(tracked, run["final"].power_ema[1]) < 1e-6
    # Untracked: closer to the exact EMA of that length than either tracked EMA is.
    got = power_ema.load_reconstruction(run["workdir"], "sigma_rel:0.075", like)[0]
    truth = _average(run["history"], 0.075, STEPS)
    assert _max_diff(got, truth) < 0.5 * min(_max_diff(e, truth) for e in run["final"].power_ema)
    assert results[1][3] < 0.1  # relative error of the fitted averaging weights
    # A second call keeps the files it finds.
    assert ema.reconstruct(run["workdir"], [0.10], step=STEPS)[0][2] is False


def test_sampling_ema_reads_the_reconstruction_and_names_the_command_when_absent(run):
    ema.reconstruct(run["workdir"], [0.10], step=STEPS)
    config = run["config"].copy_and_resolve_references()
    config.sampling.ema = "sigma_rel:0.1"
    _, state, step = train.restore_for_inference(config, run["workdir"])
    assert step == STEPS and _max_diff(state.ema_params, run["final"].power_ema[1]) == 0
    config.sampling.ema = "sigma_rel:0.2"
    with pytest.raises(WorkdirError, match="python -m diffjax.ema .*--sigma_rel=0.2"):
        train.restore_for_inference(config, run["workdir"])


def test_resume_after_a_kill_is_exact_and_keeps_what_the_killed_run_wrote(run):
    workdir = str(run["root"] / "killed")
    _Raising.at = 18  # 17 steps done: checkpoint 12, snapshots up to 15
    with pytest.raises(RuntimeError, match="killed"):
        train.train(run["config"], workdir, batches_fn=_Raising)
    assert power_ema.snapshot_steps(workdir)[-1] == 15
    resumed = train.train(run["config"], workdir, batches_fn=helpers.GlobalStream)
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(run["final"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(resumed.power_ema) == 2
    for s in power_ema.snapshot_steps(run["workdir"]):
        with open(power_ema.snapshot_path(workdir, s), "rb") as f, \
                open(power_ema.snapshot_path(run["workdir"], s), "rb") as g:
            assert f.read() == g.read(), s
    aside = os.listdir(os.path.join(workdir, power_ema.SNAPSHOT_DIR, power_ema.SUPERSEDED_DIR))
    assert [name.split(".npz")[0] for name in aside] == ["000000015"]


def test_a_classic_state_keeps_the_checkpoint_layout_of_before(run):
    config = helpers.tiny_config(run["data_dir"])
    abstract = jax.eval_shape(lambda: train.init_state(train.build(config), 0))
    top = {jax.tree_util.keystr(p[:1]) for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    assert top == {".step", ".params", ".ema_params", ".opt_state", ".key", ".nonfinite_count"}


def _cli(capsys, *args):
    status = ema.main(list(args))
    return status, capsys.readouterr().err.strip()


def test_ema_cli_refuses_bad_lengths_classic_runs_and_missing_snapshots(run, capsys, tmp_path):
    classic, empty = str(tmp_path / "classic"), str(tmp_path / "empty")
    for d, cfg in ((classic, helpers.tiny_config(run["data_dir"])), (empty, run["config"])):
        os.makedirs(d)
        checkpoint.write_config(d, cfg)
    cases = [((run["workdir"], "0.05,0.31"), "--sigma_rel=0.31 is outside (0, 0.3003]"),
             ((run["workdir"], "0"), "--sigma_rel=0 is outside"),
             ((run["workdir"], "0.1,x"), "is not a comma-separated list"),
             ((classic, "0.1"), "training.ema='classic'"),
             ((empty, "0.1"), "has no EMA snapshots"),
             ((str(tmp_path / "none"), "0.1"), "holds no run")]
    for (workdir, rels), named in cases:
        status, err = _cli(capsys, f"--workdir={workdir}", f"--sigma_rel={rels}")
        assert status == 2 and named in err and err.count("\n") == 0, err
    status, err = _cli(capsys, f"--workdir={run['workdir']}", "--sigma_rel=0.1", "--step=99")
    assert status == 2 and "--step=99 is outside the snapshots' range [1, 24]" in err
    assert not os.path.exists(os.path.join(empty, power_ema.RECONSTRUCTED_DIR))


@pytest.mark.parametrize("key, value, named", [
    ("training.ema", "powr", "valid choices: classic, power"),
    ("training.ema_sigma_rels", (0.05, 0.4), "must be distinct numbers in (0, 0.3003]"),
    ("training.ema_snapshot_every", 0, "must be an int > 0"),
    ("sampling.ema", "sigma_rel:0.5", "'sigma_rel:<s>' with s in (0, 0.3003]"),
    ("sampling.ema", "0.1", "valid choices: '' (the run's EMA)"),
])
def test_bad_ema_config_values_are_one_line_errors(run, key, value, named):
    config = run["config"].copy_and_resolve_references()
    group, name = key.split(".")
    config[group][name] = value
    with pytest.raises(ConfigError, match=None) as e:
        config_validation.validate_static(config)
    assert named in str(e.value) and "\n" not in str(e.value)
