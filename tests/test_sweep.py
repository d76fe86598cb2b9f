"""diffjax.sweep end to end on a tiny 2-D sweep: outputs, shared training, skipping, failures,
and a trial's identity (an edited config file or new code runs again)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from diffjax import sweep as sweep_lib
from diffjax.sweeps import identity, launchers, records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two trials that differ only in sampling (one shared training) and one whose training
# raises inside the run: Adam's first step at lr 1e30 makes the next loss non-finite, and
# training.nonfinite="stop" turns that into NonFiniteError (exit status 1).
# The config is a copy of configs/toy2d.py (CONFIG) that a test edits. 300 training steps leave
# the cluster tests below time to preempt the training mid-way.
SWEEP_FILE = """
from diffjax.sweep import Plot, Sweep, product

SWEEP = Sweep(
    config="CONFIG:flow",
    overrides={"model.hidden": 16, "model.depth": 1, "data.batch_size": 64,
               "training.num_steps": 300, "training.log_every": 10,
               "training.checkpoint_every": 300, "optim.warmup_steps": 5,
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


def write_sweep(root, grid: str = "") -> str:
    """``root/tiny.py`` over ``root/toy2d.py`` (a copy of configs/toy2d.py unless present)."""
    config = root / "toy2d.py"
    if not config.exists():
        shutil.copyfile(os.path.join(REPO, "configs", "toy2d.py"), config)
    text = SWEEP_FILE.replace("CONFIG", str(config))
    if grid:
        start = text.index("    grid=")
        text = text[:start] + f"    grid={grid},\n" + text[text.index("    metrics="):]
    path = root / "tiny.py"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Runs the sweep once (two workers); returns (sweep file, workdir, rows, log)."""
    root = tmp_path_factory.mktemp("sweep")
    path = write_sweep(root)
    workdir = str(root / "out")
    log: list[str] = []
    rows = sweep_lib.run(path, workdir, quick=True, workers=2, log=log.append)
    return path, workdir, rows, log


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
                                  "guidance", "sampler_nfe", "t2i_guidance",
                                  "t2i_encoders"])
def test_every_experiment_sweep_is_valid_in_full_and_quick_mode(name):
    """Config checks only (no compute): a broken experiment fails here, not after training."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sweep = sweep_lib.load_sweep(os.path.join(repo, "experiments", f"{name}.py"))
    for quick in (False, True):
        trials = sweep_lib.make_trials(sweep, quick)
        sweep_lib.check(sweep, trials)
        assert trials


# --------------------------------------------------------------------------- identity
def test_code_version_is_the_checkouts_git_revision_or_a_hash_of_the_package(tmp_path):
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:  # this checkout: its revision (plus a hash when edited)
        assert identity.code_version().split("+")[0] == f"git:{head.stdout.strip()}"
    for copy in ("a", "b", "edited"):  # installed packages (no git): a hash of their files
        shutil.copytree(os.path.join(REPO, "diffjax"), tmp_path / copy / "diffjax",
                        ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "edited" / "diffjax" / "sweeps" / "report.py", "a") as f:
        f.write("\n# an edit\n")
    a, b, edited = (identity.code_version(str(tmp_path / c / "diffjax"))
                    for c in ("a", "b", "edited"))
    assert a.startswith("files:") and a == b and edited != a


def test_trial_identity_changes_with_the_config_files_contents_and_the_code(tmp_path,
                                                                           monkeypatch):
    path = write_sweep(tmp_path)
    keys = lambda: [(t.train_key, t.key) for t in  # noqa: E731
                    sweep_lib.make_trials(sweep_lib.load_sweep(path), quick=True)]
    before = keys()
    # Trials differing only in sampling share a training but not an identity.
    assert before[0][0] == before[1][0] and before[0][1] != before[1][1]
    assert keys() == before
    with open(tmp_path / "toy2d.py", "a") as f:
        f.write("\n# an edit that changes no value\n")
    edited = keys()
    assert all(b[0] != e[0] and b[1] != e[1] for b, e in zip(before, edited))
    monkeypatch.setattr(identity, "code_version", lambda: "git:another-revision")
    assert all(e[0] != n[0] for e, n in zip(edited, keys()))


class _Recorder:
    """A launcher that runs nothing: it records what the sweep submits."""

    def __init__(self):
        self.submitted = []

    def submit(self, job, key, multi_node):
        self.submitted.append((job.kind, os.path.basename(job.run_dir)))
        records.write_json(job.record_path, job.record(0))
        return self

    def alive(self):
        return False

    def close(self):
        pass


def test_rerun_after_editing_the_config_file_retrains_and_keeps_the_old_runs(swept, tmp_path,
                                                                            monkeypatch):
    path, workdir, _, _ = swept
    root = tmp_path / "copy"
    root.mkdir()
    shutil.copyfile(os.path.join(os.path.dirname(path), "toy2d.py"), root / "toy2d.py")
    copy = str(root / "out")
    shutil.copytree(workdir, copy)
    recorder = _Recorder()
    monkeypatch.setattr(launchers, "make_launcher", lambda *a, **k: recorder)
    rerun = lambda: sweep_lib.run(write_sweep(root), copy, quick=True, log=lambda m: None)  # noqa
    rerun()  # same contents at another path: nothing to run
    assert recorder.submitted == []
    with open(root / "toy2d.py", "a") as f:
        f.write("\n# edited\n")
    rerun()
    kinds = [kind for kind, _ in recorder.submitted]
    assert sorted(kinds) == ["eval"] * 3 + ["train"] * 2
    stale = os.listdir(os.path.join(copy, records.STALE_DIR))
    assert sorted(n.split(".")[0] for n in stale) == ["diverges", "num_steps=4", "num_steps=8"]


# --------------------------------------------------------------------------- cluster launchers
def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffjax.sweep", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for(condition, what: str, timeout_s: float = 600.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster_swept(swept, tmp_path_factory):
    """The two sampling trials of the local sweep through submitit's local executor, with the
    cluster's mishaps: once the training job has logged a step, the sweep command is killed
    and the job gets SIGTERM (preemption); a second sweep command then finishes the sweep.

    Returns (workdir, output of the second command, the training's directory, the trials'
    states between the two commands).
    """
    pytest.importorskip("submitit")  # the [slurm] extra
    root = tmp_path_factory.mktemp("cluster")
    shutil.copyfile(os.path.join(os.path.dirname(swept[0]), "toy2d.py"), root / "toy2d.py")
    path = write_sweep(root, grid='product({"sampling.num_steps": [4, 8]})')
    workdir = str(root / "out")
    args = (f"--sweep={path}", f"--workdir={workdir}", "--quick",
            "--launcher=submitit_local")
    first = _cli(*args)
    train = os.path.join(workdir, sweep_lib.TRAIN_DIR)
    run_dir = _wait_for(lambda: os.path.isdir(train) and os.listdir(train)
                        and os.path.join(train, os.listdir(train)[0]), "the training")
    job = _wait_for(lambda: records.read_json(os.path.join(run_dir, records.JOB_FILE)),
                    "the training job")
    _wait_for(lambda: records.trained_to(run_dir) > 0, "a logged training step")
    os.kill(int(job["job_id"]), signal.SIGTERM)  # the local job's controller: its job process
    first.kill()
    first.wait()
    orphaned = sweep_lib.trial_states(workdir)  # no sweep command; the job goes on
    second = _cli(*args)
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out
    return workdir, out, run_dir, orphaned


def test_submitit_local_runs_the_sweep_to_the_local_launchers_results(swept, cluster_swept):
    local = {r["trial"]: r for r in swept[2]}
    with open(os.path.join(cluster_swept[0], "results.csv"), newline="") as f:
        rows = {r["trial"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"num_steps=4", "num_steps=8"}
    for name, row in rows.items():
        assert row["status"] == "ok"
        for metric in ("sliced_wasserstein", "nll"):
            assert float(row[metric]) == pytest.approx(local[name][metric], rel=1e-5)


def test_a_preempted_training_job_is_requeued_and_resumes_from_its_checkpoint(cluster_swept):
    _, _, run_dir, _ = cluster_swept
    record = records.read_json(os.path.join(run_dir, records.TRAIN_RECORD))
    assert record["status"] == "ok" and record["attempts"] == 2
    # The first attempt checkpointed where SIGTERM stopped it, before the final step.
    steps = [int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.isdigit()]
    assert max(steps) == 300 and any(0 < s < 300 for s in steps)


def test_a_rerun_after_the_sweep_command_died_reattaches_and_submits_nothing_twice(
        cluster_swept):
    workdir, out, run_dir, _ = cluster_swept
    job = records.read_json(os.path.join(run_dir, records.JOB_FILE))
    assert f"re-attached to job {job['job_id']}" in out
    assert [ln for ln in out.splitlines() if ln.endswith("...")] == ["num_steps=4 ...",
                                                                    "num_steps=8 ..."]
    jobs = [d for d in os.listdir(os.path.join(workdir, records.SUBMITIT_DIR)) if d.isdigit()]
    assert len(jobs) == 3  # one training, two evaluations


def test_status_prints_each_trials_state_with_the_tail_of_a_failure(swept, cluster_swept):
    for workdir, expected in ((cluster_swept[0], {"num_steps=4": "done", "num_steps=8": "done"}),
                              (swept[1], {"num_steps=4": "done", "diverges": "failed"})):
        states = {name: (state, detail) for name, state, detail in
                  sweep_lib.trial_states(workdir)}
        assert {n: states[n][0] for n in expected} == expected
    assert "non-finite loss" in states["diverges"][1]
    job = records.read_json(os.path.join(cluster_swept[2], records.JOB_FILE))["job_id"]
    for _, state, detail in cluster_swept[3]:  # while the training job ran on its own
        assert state == "pending" and detail.endswith(f": running (job {job})")
    text = _cli(f"--workdir={cluster_swept[0]}", "--status").communicate(timeout=120)[0]
    assert "0 pending, 0 running, 2 done, 0 failed" in text


def test_bad_launcher_input_fails_in_one_line_before_anything_is_submitted(swept, tmp_path,
                                                                         monkeypatch):
    path = swept[0]
    out = str(tmp_path / "out")
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    with pytest.raises(sweep_lib.SweepError, match=r"pip install 'diffjax\[slurm\]'"):
        sweep_lib.run(path, out, launcher="slurm")
    with pytest.raises(sweep_lib.SweepError, match="--max_parallel=0 must be >= 1"):
        sweep_lib.run(path, out, max_parallel=0)
    with pytest.raises(sweep_lib.SweepError, match="unknown option --slurm.gpus; valid keys: "
                                                   "account, additional"):
        sweep_lib.parse_slurm_options(["--slurm.gpus=8"])
    with pytest.raises(sweep_lib.SweepError, match="--slurm.time='1h' is not a SLURM time"):
        sweep_lib.parse_slurm_options(["--slurm.time=1h"])
    assert not os.path.exists(out)
    cli = _cli(f"--sweep={path}", f"--workdir={out}", "--launcher=submitit_local",
               "--slurm.nodez=2")
    text = cli.communicate(timeout=120)[0]
    assert cli.returncode == 2 and text.strip().splitlines() == [
        "error: unknown option --slurm.nodez; valid keys: " + ", ".join(
            sorted(launchers.SLURM_KEYS))]
    assert not os.path.exists(out)


def test_slurm_time_formats_are_read_as_sbatch_reads_them():
    # sbatch --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
    # "days-hours:minutes", "days-hours:minutes:seconds" (seconds round up to a minute).
    cases = {"90": 90, "90:30": 91, "2:00:00": 120, "1-0": 1440, "1-2:30": 1590,
             "0-1:00:01": 61}
    assert {t: launchers.time_minutes(t) for t in cases} == cases


def test_a_multi_node_training_runs_main_once_per_task_joined_through_jax_distributed(
        monkeypatch, tmp_path):
    pytest.importorskip("submitit")  # the [slurm] extra
    from submitit.slurm.slurm import _make_sbatch_string

    from diffjax.sweeps import jobs

    for var, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2",
                       "SLURM_PROCID": "1", "SLURM_JOB_NODELIST": "gpu[3-4]"}.items():
        monkeypatch.setenv(var, value)
    rank, cmd = jobs._task_command(["python", "-m", "diffjax.main", "--mode=train"], 0)
    assert rank == 1 and cmd[4].startswith("--coordinator_address=gpu3:")
    assert cmd[5:] == ["--num_processes=2", "--process_id=1"]
    options = sweep_lib.parse_slurm_options(
        ["--slurm.nodes=2", "--slurm.gpus_per_node=8", "--slurm.partition=big",
         "--slurm.time=2:00:00", "--slurm.additional=constraint=h100"])
    launcher = object.__new__(launchers.SubmititLauncher)
    launcher.name, launcher.options = "slurm", options
    train = _make_sbatch_string("cmd", str(tmp_path), **launcher._parameters(True, "t"))
    evaluation = _make_sbatch_string("cmd", str(tmp_path), **launcher._parameters(False, "e"))
    for line in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=big",
                 "--time=120", "--constraint=h100", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in train
    assert "#SBATCH --nodes=1\n" in evaluation
