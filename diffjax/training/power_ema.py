"""Power-function EMAs in training and their snapshots on disk (EDM2's post-hoc EMA).

With ``training.ema = "power"`` the train state keeps one power-function EMA of the
parameters per ``training.ema_sigma_rels`` (EDM2's 0.05 and 0.10 by default; Karras et al.
2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", Sec. 3), updated in
the jitted step by :func:`update`, and the loop saves :func:`save_snapshot` every
``training.ema_snapshot_every`` steps and at the last one. ``python -m diffjax.ema``
(:mod:`diffjax.ema`) turns the snapshots into the EMA of any other length; sampling reads
those with ``config.sampling.ema = "sigma_rel:<s>"`` (:func:`load_reconstruction`).

Layout under the workdir (``.npz``, one file per step, written to a temporary name and
renamed: a file under a final name is complete; an existing file is never overwritten)::

    ema_snapshots/<step>.npz                  the tracked EMAs at that step, with their
                                              sigma_rels and the number of applied updates
    ema_snapshots/superseded/<step>.npz.<t>   snapshots an interrupted run wrote after the
                                              checkpoint it resumed from (kept, not deleted)
    ema_reconstructed/sigma_rel_<s>/<step>.npz  what python -m diffjax.ema wrote

Disk: each snapshot holds ``len(ema_sigma_rels)`` copies of the parameters in their dtype,
so a run writes ``ceil(num_steps / ema_snapshot_every) x len(ema_sigma_rels) x`` the
parameters' size (EDM2: 2 EMAs, a snapshot every ~1/256 of training).
"""
from __future__ import annotations

import os
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import atomic
from diffjax import parallel, phema
from diffjax.errors import WorkdirError

SNAPSHOT_DIR = "ema_snapshots"
SUPERSEDED_DIR = "superseded"
RECONSTRUCTED_DIR = "ema_reconstructed"
_NAME = re.compile(r"^(\d+)\.npz$")


def gammas(training_cfg: Any) -> tuple[float, ...]:
    """The exponents of the tracked EMAs (empty unless ``training.ema == "power"``)."""
    if training_cfg.get("ema", "classic") != "power":
        return ()
    return tuple(phema.sigma_rel_to_gamma(float(s)) for s in training_cfg.ema_sigma_rels)


def update(power_ema: tuple, params: Any, gammas_: Sequence[float], count: jax.Array) -> tuple:
    """Each EMA after applied update number ``count`` (1-based): ``ema + (1 - beta)(p - ema)``
    with ``beta = (1 - 1/count)^(gamma + 1)`` (:func:`diffjax.phema.beta`), ``1 - beta``
    computed as ``-expm1((gamma + 1) log1p(-1/count))`` so it stays accurate in float32 at
    large counts. The first update copies the parameters (``beta = 0``)."""
    t = count.astype(jnp.float32)
    out = []
    for ema, gamma in zip(power_ema, gammas_):
        rate = -jnp.expm1((gamma + 1.0) * jnp.log1p(-1.0 / t))
        out.append(jax.tree_util.tree_map(lambda e, p: e + rate.astype(e.dtype) * (p - e),
                                          ema, params))
    return tuple(out)


# --------------------------------------------------------------------------- files
def _flat(params: Any, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _unflat(arrays: Any, like: Any, prefix: str, source: str) -> Any:
    """The pytree of ``like`` filled from ``arrays[prefix + keystr(path)]``."""
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(like)[0]:
        name = prefix + jax.tree_util.keystr(path)
        if name not in arrays or tuple(arrays[name].shape) != tuple(np.shape(leaf)):
            raise ValueError(f"{source} does not hold the parameters of this model ({name} is "
                             "missing or has another shape)")
        leaves.append(np.asarray(arrays[name]))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def _write_new(path: str, arrays: dict[str, np.ndarray]) -> bool:
    """Writes ``path`` atomically unless it exists (then nothing is written: False)."""
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write_npz(path, **arrays)
    return True


def snapshot_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, SNAPSHOT_DIR, f"{step:09d}.npz")


def save_snapshot(workdir: str, step: int, state: Any, sigma_rels: Sequence[float]) -> None:
    """Writes ``state.power_ema`` as ``ema_snapshots/<step>.npz`` (process 0; every process
    must call it: sharded parameters are gathered). An existing file is kept: a resumed run
    reproduces it exactly, and nothing on disk is overwritten."""
    emas = parallel.to_host(state.power_ema)
    if not parallel.is_main_process():
        return
    arrays = {"sigma_rels": np.asarray(sigma_rels, np.float64),
              "updates": np.asarray(int(state.step) - int(state.nonfinite_count), np.int64),
              "step": np.asarray(step, np.int64)}
    for i, ema in enumerate(emas):
        arrays.update(_flat(ema, f"ema{i}"))
    _write_new(snapshot_path(workdir, step), arrays)


def snapshot_steps(workdir: str) -> list[int]:
    folder = os.path.join(workdir, SNAPSHOT_DIR)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)


def set_aside_after(workdir: str, step: int) -> list[str]:
    """Moves the snapshots of steps after ``step`` (written by an interrupted run after the
    checkpoint it resumes from) to ``ema_snapshots/superseded/`` (process 0)."""
    later = [s for s in snapshot_steps(workdir) if s > step]
    if not later or not parallel.is_main_process():
        return []
    folder = os.path.join(workdir, SNAPSHOT_DIR, SUPERSEDED_DIR)
    os.makedirs(folder, exist_ok=True)
    moved = []
    for s in later:
        target = os.path.join(folder, f"{os.path.basename(snapshot_path(workdir, s))}."
                                      f"{int(time.time())}")
        os.replace(snapshot_path(workdir, s), target)
        moved.append(target)
    return moved


def read_snapshot(workdir: str, step: int, like: Any) -> tuple[np.ndarray, int, list]:
    """``(sigma_rels, updates, [params of each EMA])`` of the snapshot at ``step``."""
    path = snapshot_path(workdir, step)
    with np.load(path) as f:
        sigma_rels = np.asarray(f["sigma_rels"])
        emas = [_unflat(f, like, f"ema{i}", path) for i in range(len(sigma_rels))]
        return sigma_rels, int(f["updates"]), emas


def reconstruction_path(workdir: str, sigma_rel: float, step: int) -> str:
    return os.path.join(workdir, RECONSTRUCTED_DIR, f"sigma_rel_{sigma_rel:.4f}",
                        f"{step:09d}.npz")


def save_reconstruction(workdir: str, sigma_rel: float, step: int,
                        leaves: dict[str, np.ndarray]) -> bool:
    """Writes a reconstructed EMA, ``{keystr(path): array}`` as in the snapshots (False, and
    nothing written, if that file exists)."""
    return _write_new(reconstruction_path(workdir, sigma_rel, step),
                      {"params" + k: v for k, v in leaves.items()})


def load_reconstruction(workdir: str, spec: str, like: Any) -> tuple[Any, int]:
    """``(params, step)`` of the newest reconstruction named by ``spec`` (``sigma_rel:<s>``).

    Raises:
      WorkdirError: none was written; the message names the command that writes it.
    """
    sigma_rel = phema.parse_spec(spec)
    folder = os.path.dirname(reconstruction_path(workdir, sigma_rel, 0))
    names = os.listdir(folder) if os.path.isdir(folder) else []
    steps = sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)
    if not steps:
        raise WorkdirError(
            f"config.sampling.ema={spec!r}: {workdir} has no EMA reconstructed at sigma_rel "
            f"{sigma_rel:.4f}; write it with python -m diffjax.ema --workdir={workdir} "
            f"--sigma_rel={sigma_rel:g}")
    path = reconstruction_path(workdir, sigma_rel, steps[-1])
    with np.load(path) as f:
        return _unflat(f, like, "params", path), steps[-1]


def with_stored_ema(config: Any, stored: Any) -> Any:
    """``config`` with the EMA keys (``training.ema``, ``ema_sigma_rels``) of the run's
    stored config: they decide the layout of its checkpoints, so sampling a power-EMA run
    needs no ``--config.training.ema=power``. A copy when they differ."""
    if stored is None or "training" not in stored:
        return config
    mode = stored.training.get("ema", "classic")
    rels = tuple(stored.training.get("ema_sigma_rels", phema.DEFAULT_SIGMA_RELS))
    if config.training.get("ema", "classic") == mode and (
            mode != "power" or tuple(config.training.ema_sigma_rels) == rels):
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.training.ema, config.training.ema_sigma_rels = mode, rels
    return config
