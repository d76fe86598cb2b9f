"""A run's own sampling (the jitted evaluation sampler) with the sampler options the config
sets: ``t_min`` / ``t_max`` let the log-SNR samplers run a rectified-flow model, checked
against a second solver of the same ODE; ``adaptive`` out of its budget raises a one-line
error naming the config keys (it cannot raise inside the compiled program), and a training
run whose evaluation fails that way keeps the checkpoint of the step it evaluated; and
``sampling.step`` picks which checkpoint sampling and evaluation read."""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import pytest

import _train_helpers as helpers
from diffjax import checkpoint, config_validation, train
from diffjax.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny flow-matching model (rectified-flow path, velocity) trained its 50 steps."""
    root = tmp_path_factory.mktemp("trained")
    config = helpers.tiny_config(str(root / "data"))
    state = train.train(config, str(root / "run"))  # checkpoints at steps 25 and 50
    return config, train.build(config), state.ema_params, str(root / "run")


def _sampling(config, **options) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(config.sampling.to_dict())
    for k, v in options.items():
        cfg[k] = v
    return cfg


def test_log_snr_sampler_on_rectified_flow_runs_with_config_time_range(trained):
    config, setup, params, _ = trained
    assert setup.denoiser.path.name == "rectified_flow"
    refused = ml_collections.ConfigDict(config.to_dict())
    refused.sampling.sampler, refused.sampling.num_steps = "dpm_solver++", 24
    with pytest.raises(ConfigError, match=r"finite log-SNR.*t_max < 1"):
        config_validation.validate(refused)
    refused.sampling.t_max, refused.sampling.t_min = 0.999, 1e-3
    config_validation.validate(refused)  # the same model, a sampled range with finite log-SNR

    labels = np.array([0, 1, 1, 0, 1, 0, 1, 0], np.int32)
    key = jax.random.PRNGKey(3)
    dpm = train.Sampler(setup, _sampling(config, sampler="dpm_solver++", num_steps=96,
                                         t_max=0.999, t_min=1e-3), 8)(params, key, labels)
    # A second method on the same ODE, from the same noise at t = 0.999: RK4 on a fine grid
    # (401 and 801 NFE differ by 1e-3 on this 50-step model; DPM-Solver++ at 24 / 48 / 96 /
    # 192 NFE was 2.0e-2 / 1.5e-2 / 5.3e-3 / 1.9e-3 from RK4-801 when this test was written).
    rk4 = train.Sampler(setup, _sampling(config, sampler="rk4", num_steps=4 * 100 + 1,
                                         t_max=0.999, t_min=1e-3), 8)(params, key, labels)
    dpm, rk4 = np.asarray(dpm), np.asarray(rk4)
    assert np.all(np.isfinite(dpm))
    np.testing.assert_allclose(dpm, rk4, atol=1e-2)
    # ... and the range is really used: the full-range RK4 starts from other noise scale.
    full = np.asarray(train.Sampler(setup, _sampling(config, sampler="rk4", num_steps=401), 8)(
        params, key, labels))
    assert not np.allclose(full, rk4, atol=1e-5)


def test_adaptive_out_of_budget_in_a_run_raises_naming_the_config_keys(trained):
    config, setup, params, _ = trained
    labels = np.array([0, 1, 0, 1], np.int32)
    key = jax.random.PRNGKey(5)
    starved = train.Sampler(setup, _sampling(config, sampler="adaptive", num_steps=7,
                                             rtol=1e-7, atol=1e-7), 4)
    with pytest.raises(ValueError, match=r"config.sampling.num_steps=7.*rtol=1e-07, atol=1e-07"):
        starved(params, key, labels)
    # With room the solve finishes and agrees with fine-grid RK4 from the same noise (to
    # RK4-401's own error on this model, about 1e-3: see the test above). Tolerances 1e-6:
    # at 1e-5 Dormand-Prince's global error on this model reached 5.6e-3 on one coordinate
    # (jax 0.10.2, the suite's XLA flags), the local tolerance being no bound on it.
    roomy = train.Sampler(setup, _sampling(config, sampler="adaptive", num_steps=4000,
                                           rtol=1e-6, atol=1e-6), 4)(params, key, labels)
    rk4 = train.Sampler(setup, _sampling(config, sampler="rk4", num_steps=401), 4)(
        params, key, labels)
    np.testing.assert_allclose(np.asarray(roomy), np.asarray(rk4), atol=5e-3)


def test_an_evaluation_that_fails_loses_no_training(tmp_path):
    config = helpers.tiny_config(str(tmp_path / "data"), **{
        "training.num_steps": 2, "training.eval_every": 2, "training.checkpoint_every": 2,
        "eval.metrics": "sliced_wasserstein", "eval.num_samples": 8, "eval.batch_size": 8,
        "sampling.num_samples": 8, "sampling.sampler": "adaptive", "sampling.num_steps": 7,
        "sampling.rtol": 1e-7, "sampling.atol": 1e-7})
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match="config.sampling.num_steps=7"):
        train.train(config, workdir)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2", "state"))


def test_sampling_step_reads_that_checkpoint_and_refuses_one_that_is_not_there(trained):
    config, _, newest, workdir = trained
    chosen = ml_collections.ConfigDict(config.to_dict())
    chosen.sampling.step = 25
    _, state, step = train.restore_for_inference(chosen, workdir)
    assert step == 25
    leaves = zip(jax.tree_util.tree_leaves(state.ema_params), jax.tree_util.tree_leaves(newest))
    assert any(not np.allclose(a, b) for a, b in leaves)  # 25 more steps moved the EMA
    _, state, step = train.restore_for_inference(config, workdir)  # default: the newest
    assert step == 50
    for a, b in zip(jax.tree_util.tree_leaves(state.ema_params), jax.tree_util.tree_leaves(newest)):
        np.testing.assert_array_equal(a, b)
    chosen.sampling.step = 30
    with pytest.raises(checkpoint.WorkdirError,
                       match=r"config.sampling.step=30 is not a checkpoint .*valid choices: 25, 50"):
        train.restore_for_inference(chosen, workdir)
    chosen.sampling.ema = "sigma_rel:0.05"
    with pytest.raises(ConfigError, match="both choose the weights"):
        config_validation.validate(chosen)
    chosen.sampling.ema, chosen.sampling.step = "", -1
    with pytest.raises(ConfigError, match=r"config.sampling.step=-1 must be a checkpoint step"):
        config_validation.validate(chosen)


def test_generate_shows_a_bar_over_every_sampler_step_of_every_batch(trained, capsys):
    """``--mode=sample``'s bar (generate(steps_bar=True)): batches x in-program chunks x grid
    steps, with the samples of the run without it."""
    import diffjax
    from diffjax.training import evaluation
    config, setup, params, _ = trained
    _, info = diffjax.sample(lambda x, t: 0 * x, setup.denoiser.path, (1, 2),
                             jax.random.PRNGKey(0), target=setup.denoiser.target,
                             sampler="ddim", num_steps=6, return_info=True)
    steps = info.ts.shape[0] - 1                      # the grid's steps at 6 DDIM NFE
    for micro, chunks in ((0, 1), (4, 2)):
        cfg = _sampling(config, sampler="ddim", num_steps=6, micro_batch=micro)
        plain, _ = evaluation.generate(setup, params, cfg, 24, 8, progress=False)
        capsys.readouterr()
        shown, _ = evaluation.generate(setup, params, cfg, 24, 8, steps_bar=True)
        err = capsys.readouterr().err
        total = 3 * chunks * steps                    # 24 / 8 = 3 batches
        assert f"{total}/{total}" in err and "step" in err, err[-500:]
        np.testing.assert_allclose(shown, plain, rtol=1e-5, atol=1e-5)
