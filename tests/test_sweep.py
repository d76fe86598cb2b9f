"""diffjax.sweep end to end on a tiny 2-D sweep: outputs, shared training, skipping, failures."""
from __future__ import annotations

import csv
import json
import os
import textwrap

import pytest

from diffjax import sweep as sweep_lib

# Two trials that differ only in sampling (one shared training) and one whose training
# raises inside the run: Adam's first step at lr 1e30 makes the next loss non-finite, and
# training.nonfinite="stop" turns that into NonFiniteError (exit status 1).
SWEEP_FILE = """
from diffjax.sweep import Plot, Sweep, product

SWEEP = Sweep(
    config="configs/toy2d.py:flow",
    overrides={"model.hidden": 16, "model.depth": 1,
               "training.num_steps": 20, "training.log_every": 10,
               "training.checkpoint_every": 20, "optim.warmup_steps": 5,
               "eval.num_samples": 100, "eval.batch_size": 100, "sampling.num_samples": 100,
               "eval.metrics": "sliced_wasserstein,nll", "eval.likelihood_examples": 16},
    grid=product({"sampling.num_steps": [4, 8]}) + [
        {"name": "diverges", "optim.lr": 1e30, "optim.warmup_steps": 0,
          "training.nonfinite": "stop"}],
    metrics=["sliced_wasserstein", "nll"],
    quick={"sampling.sampler": "euler"},
    plots=[Plot(x="sampling.num_steps", y="sliced_wasserstein", name="sw")],
)
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Runs the sweep once (two workers); returns (sweep file, workdir, rows, log)."""
    root = tmp_path_factory.mktemp("sweep")
    path = root / "tiny.py"
    path.write_text(SWEEP_FILE)
    workdir = str(root / "out")
    log: list[str] = []
    rows = sweep_lib.run(str(path), workdir, quick=True, workers=2, log=log.append)
    return str(path), workdir, rows, log


def test_quick_sweep_writes_csv_markdown_and_plot_with_floors(swept):
    _, workdir, rows, _ = swept
    by_name = {r["trial"]: r for r in rows}
    assert set(by_name) == {"num_steps=4", "num_steps=8", "diverges"}
    for name in ("num_steps=4", "num_steps=8"):
        row = by_name[name]
        assert row["status"] == "ok"
        assert 0 < row["sliced_wasserstein"] < 5 and row["sliced_wasserstein_floor"] > 0
        assert row["nll"] == row["nll"]  # finite, not NaN
    with open(os.path.join(workdir, "results.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table] == [r["trial"] for r in rows]
    assert {"sliced_wasserstein", "sliced_wasserstein_floor", "nll", "status"} <= set(table[0])
    text = open(os.path.join(workdir, "results.md")).read()
    assert "| num_steps=4 | 4 |" in text and "![sw.png](sw.png)" in text
    with open(os.path.join(workdir, "sw.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_trials_that_differ_only_in_sampling_share_one_training(swept):
    _, workdir, _, log = swept
    records = {n: json.load(open(os.path.join(workdir, n, "result.json")))
               for n in ("num_steps=4", "num_steps=8", "diverges")}
    assert records["num_steps=4"]["train_key"] == records["num_steps=8"]["train_key"]
    assert records["diverges"]["train_key"] != records["num_steps=4"]["train_key"]
    assert sorted(os.listdir(os.path.join(workdir, sweep_lib.TRAIN_DIR))) == sorted(
        {r["train_key"] for r in records.values()})
    assert sum(line.startswith("train ") and line.endswith("...") for line in log) == 2


def test_a_trial_that_raises_is_reported_and_the_others_finish(swept):
    _, workdir, rows, _ = swept
    failed = [r for r in rows if r["status"] != "ok"]
    assert [r["trial"] for r in failed] == ["diverges"]
    assert "non-finite loss" in failed[0]["error"]
    text = open(os.path.join(workdir, "results.md")).read()
    assert "non-finite loss" in text.split("## Failed trials")[1]


def test_rerun_runs_nothing_and_leaves_finished_trials_untouched(swept):
    path, workdir, rows, _ = swept
    records = [os.path.join(workdir, n, "result.json") for n in
               ("num_steps=4", "num_steps=8", "diverges")]
    before = [os.stat(p).st_mtime_ns for p in records]
    log: list[str] = []
    again = sweep_lib.run(path, workdir, quick=True, workers=2, log=log.append)
    assert log[0] == "3 trials, 3 finished, 0 to run"
    assert not any(line.endswith("...") for line in log)
    assert [os.stat(p).st_mtime_ns for p in records] == before
    assert [r["trial"] for r in again] == [r["trial"] for r in rows]


def test_bad_sweeps_fail_before_any_compute(swept, tmp_path):
    path, workdir, _, _ = swept
    bad_key = tmp_path / "bad_key.py"
    bad_key.write_text(textwrap.dedent("""
        from diffjax.sweep import Sweep
        SWEEP = Sweep(config="configs/toy2d.py:flow", grid=[{"sampling.num_step": 3}],
                      metrics=["mmd"])
    """))
    out = str(tmp_path / "out")
    with pytest.raises(sweep_lib.SweepError, match="did you mean config.sampling.num_steps"):
        sweep_lib.run(str(bad_key), out)
    bad_value = tmp_path / "bad_value.py"
    bad_value.write_text(textwrap.dedent("""
        from diffjax.sweep import Sweep
        SWEEP = Sweep(config="configs/toy2d.py:ddpm", grid=[{"sampling.eta": 2.0}],
                      metrics=["mmd"])
    """))
    with pytest.raises(sweep_lib.SweepError, match="eta must be in"):
        sweep_lib.run(str(bad_value), out)
    image_metric = sweep_lib.Sweep(config="configs/toy2d.py:flow", metrics=["fd_classifier"])
    with pytest.raises(sweep_lib.SweepError, match="does not report"):
        sweep_lib.check(image_metric, sweep_lib.make_trials(image_metric, quick=False))
    assert not os.path.exists(out)
    with pytest.raises(sweep_lib.SweepError, match="--quick"):
        sweep_lib.run(path, workdir, quick=False)  # the workdir holds the quick run


@pytest.mark.parametrize("name", ["one_recipe", "ddim_steps", "schedules", "edm_sampler",
                                  "guidance", "sampler_nfe"])
def test_every_experiment_sweep_is_valid_in_full_and_quick_mode(name):
    """Config checks only (no compute): a broken experiment fails here, not after training."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sweep = sweep_lib.load_sweep(os.path.join(repo, "experiments", f"{name}.py"))
    for quick in (False, True):
        trials = sweep_lib.make_trials(sweep, quick)
        sweep_lib.check(sweep, trials)
        assert trials
