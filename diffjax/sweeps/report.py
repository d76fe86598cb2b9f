"""Reporting a sweep: ``results.csv``, ``results.md`` (the table, each metric's floor, the
failures) and the plots, from the trials' result records.
"""
from __future__ import annotations

import math
import os
import shutil
from typing import Any, Optional, Sequence

from diffjax import atomic
from diffjax.sweeps.declare import Plot, Script, Sweep, Trial, short
from diffjax.sweeps.records import RESULT_FILE, read_json

# Reported next to a tabulated metric when the run reports them: its real-data floor (or
# ceiling), and its standard error.
COMPANIONS = ("_floor", "_real", "_stderr")

def trial_record(workdir: str, trial: Trial) -> Optional[dict]:
    """The trial's ``result.json`` if it holds the trial's current identity."""
    record = read_json(os.path.join(workdir, trial.name, RESULT_FILE))
    return record if record is not None and record.get("trial_key") == trial.key else None


def _rows(sweep: Sweep, trials: Sequence[Trial], workdir: str) -> list[dict]:
    rows = []
    for trial in trials:
        record = trial_record(workdir, trial) or {
            "status": "missing", "metrics": {}, "error": "", "seconds": None}
        if sweep.script is not None and record["status"] == "ok":
            for row in sweep.script.rows(os.path.join(workdir, trial.name)):
                rows.append({**({"trial": trial.name} if len(trials) > 1 else {}), **row})
            continue
        row = {"trial": trial.name, **trial.varied}
        metrics = record.get("metrics", {})
        for m in sweep.metrics:
            row[m] = metrics.get(m, math.nan)
            for companion in (f"{m}{suffix}" for suffix in COMPANIONS):
                if companion in metrics:
                    row[companion] = metrics[companion]
        row["status"] = record["status"]
        row["train_s"] = record.get("train_seconds")
        row["eval_s"] = record.get("seconds")
        row["error"] = (record.get("error") or "").strip().split("\n")[-1][:160]
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value).replace("|", "\\|")


def _label(column: str) -> str:
    """``sampling.eta`` -> ``eta``; ``path.name`` -> ``path``."""
    parts = column.split(".")
    return parts[-2] if len(parts) > 1 and parts[-1] == "name" else parts[-1]


def markdown_table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None) -> str:
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    head = [_label(c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_outputs(sweep: Sweep, trials: Sequence[Trial], workdir: str, sweep_path: str,
                  quick: bool, seconds: float, plots: bool = True,
                  launcher: str = "local") -> list[dict]:
    """``results.csv``, ``results.md`` and (``plots``) the plots, from the result records.

    Only the records holding a trial's current identity count: a trial not run yet shows as
    ``missing``.
    """
    rows = _rows(sweep, trials, workdir)
    varied = [k for t in trials for k in t.varied]
    columns = [c for c in dict.fromkeys(["trial", *varied] + [k for r in rows for k in r])
               if any(c in r for r in rows)]
    atomic.write_csv(os.path.join(workdir, "results.csv"), rows, columns)
    shown = [c for c in columns if c not in ("error",)
             and not (c == "train_s" and all(r.get(c) is None for r in rows))]
    if any(r.get("error") for r in rows):
        shown.append("error")
    where = {"local": f"on {os.cpu_count()} CPU cores", "slurm": "on SLURM",
             "submitit_local": f"through submitit on {os.cpu_count()} CPU cores"}[launcher]
    command = (f"python -m diffjax.sweep --sweep={os.path.relpath(sweep_path)} "
               f"--workdir=DIR{' --quick' if quick else ''}"
               f"{'' if launcher == 'local' else f' --launcher={launcher}'}")
    records = [trial_record(workdir, t) or {} for t in trials]
    trainings = {t.train_key: r.get("train_seconds") or 0.0 for t, r in zip(trials, records)}
    evals = sum(r.get("seconds") or 0.0 for r in records)
    text = [f"# {os.path.splitext(os.path.basename(sweep_path))[0]}"
            f"{' (quick)' if quick else ''}", "", sweep.description, "",
            f"`{command}` {where}: {len(trials)} trials, "
            + (f"{len(trainings)} training run(s) {sum(trainings.values()) / 60:.1f} min + "
               if not sweep.script else "")
            + f"{evals / 60:.1f} min of trial runs (wall time of the subprocesses, all "
            f"invocations; this one {seconds / 60:.1f} min). train_s is the trial's shared "
            "training, eval_s its own run.", "",
            markdown_table(rows, shown), ""]
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        text += ["## Failed trials", ""]
        for r in failed:
            record = read_json(os.path.join(workdir, r["trial"], RESULT_FILE)) or {}
            text += [f"### {r['trial']}", "", "```", record.get("error", ""), "```", ""]
    pngs = _copy_images(sweep.script, trials, workdir) if sweep.script and plots else []
    for plot in sweep.plots if plots else ():
        try:
            pngs.append(make_plot(plot, rows, workdir))
        except (KeyError, ValueError, TypeError) as e:
            text += [f"plot {plot.name} not drawn: {e}", ""]
    text += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs]
    atomic.write_text(os.path.join(workdir, "results.md"), "\n".join(text).strip() + "\n")
    return rows


def _copy_images(script: Script, trials: Sequence[Trial], workdir: str) -> list[str]:
    out = []
    for trial in trials:
        for image in script.images:
            source = os.path.join(workdir, trial.name, image)
            if os.path.isfile(source):
                name = image if len(trials) == 1 else f"{trial.name}_{image}"
                shutil.copyfile(source, os.path.join(workdir, name))
                out.append(os.path.join(workdir, name))
    return out


def make_plot(plot: Plot, rows: Sequence[dict], workdir: str) -> str:
    """Draws ``plot`` from the table rows into ``DIR/<plot.name>.png``; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if r.get("status", "ok") == "ok" and plot.x in r and plot.y in r]
    groups: dict[tuple, list[dict]] = {}
    for r in good:
        groups.setdefault(tuple(r.get(s) for s in plot.series), []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, group in groups.items():
        if all(isinstance(r[plot.x], (int, float)) for r in group):
            group = sorted(group, key=lambda r: r[plot.x])
        name = ", ".join(f"{_label(s)}={short(v)}" for s, v in zip(plot.series, label)
                         if v not in (None, ""))
        ax.plot([r[plot.x] for r in group], [r[plot.y] for r in group], "o-",
                label=name or None)
    floors = [r[f"{plot.y}_floor"] for r in good if f"{plot.y}_floor" in r]
    if floors:
        ax.axhline(sum(floors) / len(floors), color="k", ls="--", lw=1,
                   label="floor (real data)")
    ax.set_xlabel(plot.x)
    ax.set_ylabel(plot.y)
    if plot.logx:
        ax.set_xscale("log")
    if plot.logy:
        ax.set_yscale("log")
    if plot.title:
        ax.set_title(plot.title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, f"{plot.name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
