"""``config.distill``: the keys every few-step method reads, with their defaults."""
from __future__ import annotations

from typing import Any

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    """Every key of ``config.distill`` (a method ignores the keys of the others)."""
    return ml_collections.ConfigDict({
        # A trained run's workdir or "analytic:<mixture>" (diffjax.distill.teacher.MIXTURES).
        "teacher": ml_collections.FieldReference(None, field_type=str),
        # progressive, reflow: the student starts as its teacher when the teacher is a run
        # with the student's network (False: from the config's seed, for ablations).
        "init_from_teacher": True,
        # a conditional teacher read under classifier-free guidance of this scale (1.0: not
        # guided), only inside guidance_interval = (lo, hi) in sigma/alpha when set; the
        # student then samples at guidance 1 (diffjax.distill.teacher).
        "guidance_scale": 1.0,
        "guidance_interval": ml_collections.FieldReference(None, field_type=tuple),
        # progressive, reflow: start from this run's EMA parameters instead (a run of the
        # student's network, e.g. a reflow student fine-tuned at its sampler's times on the
        # original teacher's couplings); None: the teacher's.
        "init_from": ml_collections.FieldReference(None, field_type=str),
        # progressive: teacher DDIM steps of round 1, then each round's half; this run
        # trains round `round` (student steps steps[round], teacher steps[round - 1]).
        "steps": (64, 32, 16, 8, 4, 2, 1),
        "round": 1,
        # consistency: discretisation curriculum N(k) = min(s0 2^floor(k/K'), s1) + 1
        # (Song & Dhariwal 2023); s0 = s1 gives the fixed N of consistency distillation.
        "s0": 10,
        "s1": 1280,
        "p_mean": -1.1,                # lognormal proposal of the noise level (iCT)
        "p_std": 2.0,
        "huber_c": -1.0,               # pseudo-Huber c; < 0 = 0.00054 sqrt(dim)
        # reflow: the couplings (noise, teacher ODE sample), reproducible from their seed.
        "num_couplings": 4096,
        "coupling_seed": 0,
        "ode_steps": 32,               # RK4 steps of the teacher ODE per coupling
        "coupling_batch": 1024,        # couplings solved at once (memory: a guided teacher
                                       # runs on twice as many rows)
        # reflow: where solved coupling sets are kept, keyed by their content (teacher
        # weights and config, path, shape, n, seed, ode_steps), so the k-step students of
        # one teacher solve its ODE once; "off": solve in every run.
        "couplings_cache": "~/.cache/diffjax/couplings",
        # reflow: 0 trains at the recipe's time distribution (Liu et al.'s reflow); k >= 1 at
        # the k times of the k-step Euler grid only (their k-step distillation).
        "reflow_steps": 0,
        # shortcut: step sizes 2^-j, j < log2_levels; this fraction of rows bootstraps.
        "log2_levels": 7,
        "bootstrap_fraction": 0.25,
        # meanflow: fraction of rows with r != t; adaptive weight 1 / (|err|^2 + c)^p.
        "r_neq_t": 0.25,
        "adaptive_p": 1.0,
        "adaptive_c": 1e-3,
        "t_mu": -0.4,                  # logit-normal (mu, sigma) of t and r
        "t_sigma": 1.0,
    })


def get(config: ml_collections.ConfigDict, key: str) -> Any:
    """``config.distill.<key>``, or its default when the config has no such key."""
    group = config.get("distill") or ml_collections.ConfigDict()
    return group.get(key, default_config()[key])
