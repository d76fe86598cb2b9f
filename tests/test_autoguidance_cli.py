"""Autoguidance from the command line: ``config.sampling.guide_workdir`` / ``guide_step`` and
``guidance_interval`` in ``--mode=sample`` (diffjax.main's sampling, in process).

Ground truth: a guide equal to the main model leaves every scale at the main model
(``D + w (D - D) = D``); at scale 0 the sample is the guide's own, drawn from a checkpoint
restored directly with orbax.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import _train_helpers as helpers
from diffjax import checkpoint, config_validation, main, parallel, train
from diffjax.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def run(tmp_path_factory, xla_cache):
    """A class-conditional toy run with checkpoints at steps 12 and 24."""
    root = tmp_path_factory.mktemp("autoguidance")
    config = helpers.power_ema_config(str(root / "data"))
    workdir = str(root / "run")
    train.train(config, workdir, batches_fn=helpers.GlobalStream)
    return {"config": config, "workdir": workdir, "root": root}


def _sampling(run, **changes):
    config = run["config"].copy_and_resolve_references()
    config.sampling.update(sampler="euler", num_steps=6, num_samples=20)
    config.eval.batch_size = 20
    config.sampling.update(changes)
    return config


def _sample(run, name, **changes):
    """``--mode=sample --restore_from=RUN --workdir=OUT/name`` with ``changes``."""
    config = _sampling(run, **changes)
    out = str(run["root"] / name)
    config_validation.validate(config)
    main._sample(config, out, run["workdir"])
    with np.load(os.path.join(out, "samples", "sample_0000024.npz")) as f:
        return f["x"], f["labels"]


@pytest.fixture(scope="module")
def plain(run):
    x, labels = _sample(run, "plain")
    assert len(set(labels.tolist())) == 2  # conditional: both classes are drawn
    return x


def test_guide_equal_to_the_main_model_is_the_main_model_at_any_scale(run, plain):
    guided, _ = _sample(run, "self", guidance_scale=3.0, guide_workdir=run["workdir"])
    np.testing.assert_allclose(guided, plain, atol=1e-5)


def test_scale_zero_samples_the_guide_checkpoint_and_an_interval_covering_all_is_plain(
        run, plain):
    guided, _ = _sample(run, "early", guidance_scale=0.0, guide_workdir=run["workdir"],
                        guide_step=12)
    # The checkpoint of step 12, restored with orbax directly, sampled unguided.
    config = _sampling(run)
    setup = train.build(config)
    abstract, _ = train.setup_state(setup, config, parallel.make_mesh())
    reader = checkpoint.Checkpointer(run["workdir"], read_only=True)
    early = reader.restore(12, abstract)
    reader.close()
    truth, _ = train.generate(setup, early.ema_params, config.sampling, 20, 20, progress=False)
    np.testing.assert_allclose(guided, truth, atol=1e-5)
    assert np.abs(guided - plain).max() > 1e-2  # the early checkpoint is another model

    both = dict(guidance_scale=2.0, guide_workdir=run["workdir"], guide_step=12)
    mixed, _ = _sample(run, "mixed", **both)
    # Every noise level, sigma/alpha = inf at rectified flow's t = 1 included.
    covering, _ = _sample(run, "covering", guidance_interval=(0.0, float("inf")), **both)
    np.testing.assert_allclose(covering, mixed, atol=1e-6)


def _fake_run(root, name: str, config) -> str:
    workdir = str(root / name)
    os.makedirs(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "5"))
    checkpoint.write_config(workdir, config)
    return workdir


def test_a_guide_of_another_path_or_data_or_step_and_a_reversed_interval_are_one_line_errors(
        run):
    other_path = run["config"].copy_and_resolve_references()
    other_path.path.name = "vp_linear"
    other_data = run["config"].copy_and_resolve_references()
    other_data.data.dataset = "digits"
    root = run["root"]
    cases = [
        (dict(guide_workdir=_fake_run(root, "vp", other_path)), r"another path \(vp_linear"),
        (dict(guide_workdir=_fake_run(root, "digits", other_data)),
         re.escape("models data of shape (8, 8, 1) (digits); this model's data has shape (2,)")),
        (dict(guide_workdir=run["workdir"], guide_step=13),
         "guide_step=13 is not a checkpoint of .*; valid choices: 12, 24"),
        (dict(guide_step=12), "guide_step=12 needs config.sampling.guide_workdir"),
        (dict(guide_workdir=str(root / "nothing")), "holds no run"),
        (dict(guide_workdir=run["workdir"], guidance_scale=2.0, guidance_interval=(2.0, 1.0)),
         r"guidance_interval must satisfy 0 <= sigma_lo <= sigma_hi"),
    ]
    for changes, named in cases:
        with pytest.raises(ConfigError, match=named) as e:
            config_validation.validate(_sampling(run, **changes))
        assert "\n" not in str(e.value)
    assert json.load(open(os.path.join(root, "vp", checkpoint.CONFIG_FILE)))  # left in place
