"""The sampler registry: each sampler is a function plus one line saying what it costs.

A registry entry holds the function, its cost per grid interval and its options' defaults;
everything else :mod:`.engine` needs is derived from those:

* ``cost=None`` means the solver picks its own steps (``adaptive``): no grid, no trajectory,
  no inpainting, ``num_steps`` is a budget;
* a sampler that evaluates the model more than once per interval evaluates it at the
  interval's end, so also at ``t_min`` (an ``x0`` model needs ``sigma(t_min) > 0`` there);
* ``noise`` names when it draws random numbers: ``True`` always, or the name of the option
  that switches the noise on when truthy (``eta``, ``s_churn``, ``sde``).

What is left are each paper's conventions: the default ``grid``, whether the last step goes
to ``x0_hat`` (``denoise_to_zero``), whether its formulas need a finite log-SNR, and whether
an odd leftover evaluation becomes a final Euler step (``split_last``, Karras et al.'s Heun).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Union

from diffjax.samplers import (adaptive, ancestral, deis, dpm_solver, edm, few_step, langevin,
                              ode, sde, unipc)

Options = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A registry entry (see the module docstring)."""

    fn: Callable
    cost: Union[int, Callable[[Options], int], None] = 1
    options: Options = dataclasses.field(default_factory=dict)
    check: Callable[[Options], None] = lambda opts: None
    noise: Union[bool, str] = False
    grid: str = "uniform"
    denoise_to_zero: Union[bool, Callable[[Options], bool]] = True
    finite_logsnr: bool = False
    split_last: bool = False
    off_grid: Callable[[Options], bool] = lambda opts: False  # evaluates between grid times

    @property
    def fixed_step(self) -> bool:
        return self.cost is not None

    def evals_per_interval(self, opts: Options) -> int:
        return self.cost(opts) if callable(self.cost) else int(self.cost)

    def evaluates_at_t_min(self, opts: Options) -> bool:
        return not self.fixed_step or self.evals_per_interval(opts) > 1

    def stochastic(self, opts: Options) -> bool:
        return self.noise if isinstance(self.noise, bool) else bool(opts[self.noise])


# -- option checks ----------------------------------------------------------------------
def _in_range(name: str, lo: float, hi: float) -> Callable[[Options], None]:
    def check(opts):
        if not lo <= opts[name] <= hi:
            raise ValueError(f"option {name} must be in [{lo}, {hi}], got {opts[name]!r}")
    return check


def _order(opts: Options) -> None:
    if opts["order"] not in (1, 2, 3):
        raise ValueError(f"option order must be one of 1, 2, 3; got {opts['order']!r}")


def _check_pc(opts: Options) -> None:
    if not opts["snr"] > 0:
        raise ValueError(f"option snr must be > 0, got {opts['snr']!r}")
    c = opts["corrector_steps"]
    if not isinstance(c, int) or c < 0:
        raise ValueError(f"option corrector_steps must be an int >= 0, got {c!r}")


def _check_edm(opts: Options) -> None:
    for name in ("s_churn", "s_noise", "s_tmin"):
        if not opts[name] >= 0:
            raise ValueError(f"option {name} must be >= 0, got {opts[name]!r}")
    if not opts["s_tmin"] <= opts["s_tmax"]:
        raise ValueError(f"options need s_tmin <= s_tmax, got {opts['s_tmin']}, {opts['s_tmax']}")


def _check_convention(opts: Options) -> None:
    if opts["convention"] not in dpm_solver.CONVENTIONS:
        raise ValueError(f"option convention must be one of {', '.join(dpm_solver.CONVENTIONS)}, "
                         f"got {opts['convention']!r}")


def _check_dpm(opts: Options) -> None:
    _order(opts)
    _check_convention(opts)
    if opts["sde"] and opts["order"] == 3:
        raise ValueError("dpm_solver++ with sde=True has orders 1 and 2 (SDE-DPM-Solver++(2M)); "
                         "got order=3")


def _check_unipc(opts: Options) -> None:
    _order(opts)
    if opts["variant"] not in ("bh1", "bh2"):
        raise ValueError(f"option variant must be 'bh1' or 'bh2', got {opts['variant']!r}")
    _check_convention(opts)


def _check_langevin(opts: Options) -> None:
    n = opts["steps_per_level"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"option steps_per_level must be an int >= 1, got {n!r}")
    if opts["step_rule"] not in langevin.STEP_RULES:
        raise ValueError(f"option step_rule must be one of {', '.join(langevin.STEP_RULES)}; "
                         f"got {opts['step_rule']!r}")
    for name in ("step_size", "snr"):
        if not opts[name] > 0:
            raise ValueError(f"option {name} must be > 0, got {opts[name]!r}")


def _check_tolerances(opts: Options) -> None:
    for name in ("rtol", "atol"):
        if not opts[name] > 0:
            raise ValueError(f"option {name} must be > 0, got {opts[name]!r}")


#: Final-step convention of dpm_solver++ and unipc (:func:`.dpm_solver.step_order`). Measured
#: on the exact digits mixture (logsnr grid, vp_linear / vp_cosine), FD/floor at 5-10 NFE:
#: "reference" is better in 28 of 30 cells (NFE 5, 6, 7, 8, 10; e.g. UniPC-3 at 7 NFE 6.1 vs
#: 14.7, DPM-Solver++(3M) at 8 NFE 3.8 vs 5.7 on vp_linear); "diffusers" only for 2M at 5 NFE
#: (3.2 vs 4.0 on vp_linear, 6.4 vs 6.9 on vp_cosine).
DEFAULT_CONVENTION = "reference"


def _final_step_to_zero(opts: Options) -> bool:
    return opts["convention"] == "diffusers"


_EDM = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
_DPM = {"order": 2, "lower_order_final": True, "sde": False, "convention": DEFAULT_CONVENTION}
_UNIPC = {"order": 3, "variant": "bh2", "lower_order_final": True,
          "convention": DEFAULT_CONVENTION}
_ODE = {"variable": None}  # "t" or "sigma" (sigma/alpha); None: per path (conventions)
_JUMP = Sampler(few_step.average_velocity, denoise_to_zero=False)  # shortcut models, MeanFlow
_LANGEVIN = {"steps_per_level": 10, "step_size": 2e-5, "step_rule": "paper", "snr": 0.16}

SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ancestral.ddpm, noise=True),
    "ddim": Sampler(ancestral.ddim, options={"eta": 0.0}, check=_in_range("eta", 0.0, 1.0),
                    noise="eta"),
    "euler_maruyama": Sampler(sde.euler_maruyama, noise=True, finite_logsnr=True),
    "pc": Sampler(sde.pc, cost=lambda opts: 1 + opts["corrector_steps"],
                  options={"snr": 0.16, "corrector_steps": 1}, check=_check_pc, noise=True,
                  finite_logsnr=True),
    "euler": Sampler(ode.euler, options=_ODE),
    "heun": Sampler(ode.heun, cost=2, options=_ODE, split_last=True),
    "rk4": Sampler(ode.rk4, cost=4, options=_ODE, off_grid=lambda opts: True),
    "edm": Sampler(edm.edm, cost=2, options=_EDM, check=_check_edm, noise="s_churn",
                   grid="karras", finite_logsnr=True, split_last=True,
                   off_grid=lambda opts: opts["s_churn"] > 0),
    "dpm_solver++": Sampler(dpm_solver.dpm_solver_pp, options=_DPM, check=_check_dpm,
                            noise="sde", grid="logsnr", denoise_to_zero=_final_step_to_zero,
                            finite_logsnr=True),
    "unipc": Sampler(unipc.unipc, options=_UNIPC, check=_check_unipc, grid="logsnr",
                     denoise_to_zero=_final_step_to_zero, finite_logsnr=True),
    "deis": Sampler(deis.deis, options={"order": 3}, check=_order, grid="quadratic",
                    denoise_to_zero=False, finite_logsnr=True),
    "langevin": Sampler(langevin.langevin, cost=lambda opts: opts["steps_per_level"],
                        options=_LANGEVIN, check=_check_langevin, noise=True, grid="logsnr",
                        finite_logsnr=True),
    "consistency": Sampler(few_step.consistency, noise=True, denoise_to_zero=False),
    "mean_flow": _JUMP,
    "shortcut": _JUMP,
    "adaptive": Sampler(adaptive.adaptive, cost=None, options={"rtol": 1e-5, "atol": 1e-5},
                        check=_check_tolerances, denoise_to_zero=False,
                        off_grid=lambda opts: True),
}


def get(name: str) -> Sampler:
    """The registry entry of ``name``; ValueError naming the valid samplers otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = ["SAMPLERS", "Sampler", "get"]
