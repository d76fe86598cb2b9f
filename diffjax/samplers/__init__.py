"""Sampling: ``sample(model_fn, path, shape, key, *, target, sampler, num_steps, **options)``.

The model's output is turned into ``(x0_hat, eps_hat)`` once (:func:`diffjax.targets.to_x0_eps`)
and every sampler is a small function of that pair (:mod:`.base`). The whole loop is one
``lax.scan`` (``lax.while_loop`` for ``adaptive``) under ``jax.jit``: no host round trip per
step. Time runs data -> noise, so samplers integrate from ``t_max`` down to ``t_min``.

``num_steps`` is the number of model evaluations (NFE). It is spent on ``K`` grid intervals
and, with ``denoise_to_zero``, one final evaluation that returns ``x0_hat(x_{t_min}, t_min)``
(the last step "to data": exactly the DDPM / DDIM / Euler-in-``sigma`` step to ``sigma = 0``).

==============  ===================================  =========  ==  ==========================
sampler         options (defaults)                   grid       d   NFE (n = num_steps)
==============  ===================================  =========  ==  ==========================
ddpm            --                                   uniform    1   n; K = n - d
ddim            eta=0.0                              uniform    1   n; K = n - d
euler_maruyama  --                                   uniform    1   n; K = n - d
pc              snr=0.16, corrector_steps=1 (c)      uniform    1   K (1+c) + d; K = (n-d)//(1+c)
euler           variable (per path, below)           uniform    1   n; K = n - d
heun            variable                             uniform    1   n; K = ceil((n-d)/2), the
                                                                    last interval Euler if n-d
                                                                    is odd
rk4             variable                             uniform    1   4K + d; K = (n-d)//4
edm             s_churn=0, s_tmin=0, s_tmax=inf,     karras     1   as heun
                s_noise=1
dpm_solver++    order=2, lower_order_final=True,     logsnr     0   n; K = n - d
                sde=False, convention="reference"              (1 with "diffusers")
unipc           order=3, variant="bh2",              logsnr     0   n; K = n - d
                lower_order_final=True,                        (1 with "diffusers")
                convention="reference"
deis            order=3                              quadratic  0   n; K = n - d
consistency     --                                   uniform    0   n; K = n (:mod:`.few_step`)
mean_flow       --                                   uniform    0   n; K = n (= ``shortcut``;
                                                                    :mod:`.few_step`)
adaptive        rtol=1e-5, atol=1e-5                 --         0   chosen by the solver, at
                                                                    most n; in SampleInfo.nfe
                                                                    (diffrax Dopri5 + PID,
                                                                    .adaptive). Raises if n is
                                                                    too few
==============  ===================================  =========  ==  ==========================

``d`` is the default of ``denoise_to_zero``, each paper's own convention (DDPM's last step,
DDIM's step to ``alpha = 1``, score-SDE's noise removal and EDM's final Euler step all return
``x0_hat``; DPM-Solver++, UniPC and DEIS stop at ``t_min``). With ``num_steps = T`` and
``t_min = 1/T`` the ``ddpm`` sampler on the ``ddpm`` path is Ho et al.'s sampler exactly.

On a discrete-time path (``ddpm``: trained only at ``t = i/T``) the grid column is replaced by
the integer spacing ``trailing`` and the model is evaluated only at training times
(:mod:`.conventions`, :mod:`.grids`): ``rk4``, ``adaptive`` and ``edm`` with churn are refused
there, and continuous grid names are rounded to ``i/T``.

``variable`` (:mod:`.ode`): ``"t"`` steps in the path's time, ``"sigma"`` in ``sigma/alpha``
(Karras et al. 2022); the default is ``"sigma"`` on the ``edm`` path, ``"t"`` elsewhere.
``convention`` (:mod:`.dpm_solver`): ``"reference"`` (Lu et al.'s / Zhao et al.'s code) or
``"diffusers"`` (final step to ``sigma = 0``, lower order below 15 steps); the defaults are
measured on the exact digits mixture by ``experiments/benchmarks/sampler_numerics.py``.
``langevin`` (:mod:`.langevin`, Song & Ermon 2019): ``steps_per_level=10``, ``step_size=2e-5``,
``step_rule="paper"`` (or ``"snr"`` with ``snr=0.16``), logsnr grid; NFE = levels x
``steps_per_level`` + d.

Clipping, every sampler: ``clip_x0`` (``c``) and ``dynamic_threshold`` (``p``) clip ``x0_hat``
to ``[-c, c]`` (Ho et al. 2020) or threshold it dynamically (Saharia et al. 2022) in the one
``(x0_hat, eps_hat)`` conversion, ``eps_hat`` recomputed from it (:mod:`.clipping`).

Options every sampler takes:

* ``t_min``, ``t_max``: the time range (default ``path.t_min``, ``path.t_max``). Samples
  start from ``N(0, (alpha^2 + sigma^2)(t_max) I)``.
* ``denoise_to_zero``: the final ``x0_hat`` step (default per the table above, and off
  where ``sigma(t_min) = 0``, e.g. rectified flow's ``t_min = 0``: ``x_{t_min}`` is data).
* ``return_info``: return ``(x, SampleInfo)`` instead of ``x``; ``return_trajectory`` also
  fills ``SampleInfo.trajectory`` (``[K + 1, *shape]``, ``x`` at each grid time; fixed-step
  samplers only).
* Parameters: ``params`` (a pytree) makes ``model_fn`` ``f(params, x, t, cond)``; they are
  traced arguments of the compiled run, so new weights of the same structure do not
  recompile and the program does not grow with the weights. Without ``params`` the model
  is a closure ``f(x, t)`` (``f(x, t, cond)`` with a condition), fine for analytic models.
* Conditions and guidance (:mod:`.guidance`, DESIGN §6): ``cond`` (a condition pytree,
  :mod:`diffjax.conditions`; ``label=`` is shorthand for ``cond={"label": label}``),
  ``guidance_scale`` ``w`` (default 1 = the conditional model) with ``uncond`` (default: the
  null of each kind from ``nulls=``, a :class:`diffjax.conditions.Nulls`, or
  ``num_classes=`` for labels) gives classifier-free guidance in one batched call;
  ``guide_fn`` (+ ``guide_params``, ``guide_target``) gives autoguidance instead;
  ``guidance_interval=(lo, hi)`` in ``sigma/alpha`` guides only inside that noise range.
  ``w`` is a traced argument (only ``w = 0`` and ``w = 1``, which evaluate one model, are
  programs of their own), so a sweep over scales compiles once.
* ``callback``: ``fn(i, t, x, x0_hat)`` called on the host after every grid step ``i`` (``t``
  the step's end time, ``x`` the sample there, ``x0_hat`` the last denoiser estimate of the
  step), through ordered ``jax.debug.callback``; off (None) by default, and then absent from
  the program. ``progress``: ``fn(i, n)`` after every grid step ``i`` of ``n``, the index
  alone through an unordered callback (so it runs on a mesh of several devices, where ordered
  effects cannot, and moves no sample to the host); the CLI's progress bar. Fixed-step
  samplers only.
* SDEdit: ``x_init`` (``shape``) starts from ``alpha(t_max) x_init + sigma(t_max) eps``; pass
  ``t_max`` = the editing strength.
* Inpainting: ``known`` (``shape``) and ``mask`` (broadcastable, 1 = known) re-impose the known
  region at every grid time at its noise level; ``inpaint_noise`` ``"fixed"`` (one ``eps``,
  the starting noise) or ``"fresh"`` (a new draw each step). The returned sample equals
  ``known`` where ``mask = 1``. Not with ``adaptive``.

Fixed-step samplers also take ``grid`` (:mod:`.grids`: uniform, quadratic, logsnr, karras,
leading, trailing, linspace (discrete paths),
or an explicit decreasing array of ``K + 1`` times, e.g. from :func:`.tuning.optimise_grid`;
it then sets ``t_max`` and ``t_min``) and ``rho`` (karras, default 7).

Unknown samplers, grids or options, ``num_steps < 1`` and a path/target/sampler pair that
cannot work on ``[t_min, t_max]`` raise ``ValueError`` before any compute, naming the problem
and the valid choices. In particular ``alpha(t_max) = 0`` (rectified flow at ``t = 1``) leaves
``x0_hat`` undefined for ``eps``/``score`` models, and log-SNR based samplers and grids
(``dpm_solver++``, ``unipc``, ``deis``, ``edm``, ``euler_maruyama``, ``pc``, ``logsnr``,
``karras``) need ``alpha(t_max) > 0`` and ``sigma(t_min) > 0``: pass e.g. ``t_max=0.999``
there.

``adaptive`` that runs out of its budget ``n`` before ``t_min`` raises ``ValueError`` naming
``num_steps`` and the tolerances. Called under a trace (inside the caller's own ``jit``) it
cannot raise: it then returns NaN samples and ``SampleInfo.finished = False``.

Jitted runs are cached on ``(sampler, model_fn, path, target, shape, plan, options)``: reuse
the same ``model_fn`` object (and pass weights as ``params``) to avoid recompiling.
:func:`check` runs every argument check of :func:`sample` without a model (for config
validation). The engine lives in :mod:`.engine` (plan, compiled run), :mod:`.options` (the
checks) and :mod:`.registry` (one entry per sampler: its function and its cost).
"""
from __future__ import annotations

from diffjax.samplers.engine import SampleInfo, _prepare, _run, check, sample
from diffjax.samplers.grids import GRIDS, time_grid
from diffjax.samplers.registry import SAMPLERS, Sampler

__all__ = ["sample", "check", "SAMPLERS", "GRIDS", "Sampler", "SampleInfo", "time_grid"]
