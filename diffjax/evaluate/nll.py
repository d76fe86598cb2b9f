"""Model metrics: negative log-likelihood of held-out data through the probability-flow ODE.

Unlike the sample metrics of :mod:`diffjax.evaluate.metrics` these judge the *model*: they
integrate ``d log p_t / dt = -div v`` with :func:`diffjax.likelihood.log_likelihood` from each
test example at ``path.t_min`` to the prior at ``path.t_max``.

=============  ===========  =================================================================
name           data kinds   reports
=============  ===========  =================================================================
nll            points,      ``nll``: mean ``-log p(x)`` in nats per example; ``nll_stderr``:
               image        its standard error over the examples (and Hutchinson probes)
bits_per_dim   image        ``bits_per_dim``: ``(nll / D + log 127.5) / log 2`` of the
                            dequantised 8-bit data (:func:`diffjax.likelihood.bits_per_dim`)
=============  ===========  =================================================================

Dequantisation. Images are stored as uint8 ``k`` and seen as ``y = k / 127.5 - 1``; the
likelihood is that of ``y = (k + u) / 127.5 - 1`` with ``u ~ U(0, 1)`` (one draw per example),
so ``nll`` of images is a density of dequantised data and ``bits_per_dim`` an upper bound on
the code length of the uint8 image, on the same scale as CIFAR-10's numbers (a uniform model
scores 8). The bundled 8x8 digits have 17 intensities (0..16) stored as
``round(v * 255 / 16)``: they are 8-bit images that use 17 of the 256 levels, so their
entropy is at most ``log2 17 = 4.09`` bits/dim and a model that finds the 17 levels can score
well below 8 -- read digits' bits/dim as a comparison between models, not against CIFAR's.
2-D points are continuous: ``nll`` in nats, no dequantisation.

A class-conditional model is scored by ``log p(x | y)`` with the test labels (guidance scale
1: the conditional model itself).

The divergence is exact (``D`` JVPs per evaluation) up to :data:`EXACT_MAX_DIM` dimensions
and Hutchinson's estimate (one Rademacher probe per example, unbiased) above, unless the
caller names one.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import likelihood

MODEL_METRIC_KINDS = {"nll": ("points", "image"), "bits_per_dim": ("image",)}
REPORTS = {"nll": ("nll", "nll_stderr"), "bits_per_dim": ("bits_per_dim",)}
EXACT_MAX_DIM = 16
DIVERGENCES = ("auto",) + likelihood.DIVERGENCES


def check(names: Sequence[str], data_kind: str, path, target: str) -> None:
    """Raises ValueError if a model metric cannot be computed for this data/path/target
    (``path=None``: the data kind only)."""
    for name in names:
        if data_kind not in MODEL_METRIC_KINDS[name]:
            raise ValueError(f"metric {name!r} does not apply to {data_kind} data: bits per "
                             "dimension are defined for quantised (8-bit) images; use 'nll' "
                             "(nats) for continuous data")
    if not names or path is None:
        return
    if target in ("eps", "score") and not float(path.alpha(jnp.asarray(path.t_max))) > 0:
        raise ValueError(f"{list(names)} integrate to t_max = {path.t_max}, where alpha = 0 on "
                         f"{path.name} and a {target!r} model gives no x0_hat: set "
                         "config.path.t_max < 1 (e.g. 0.999)")
    if target == "x0" and not float(path.sigma(jnp.asarray(path.t_min))) > 0:
        raise ValueError(f"{list(names)} start at t_min = {path.t_min}, where sigma = 0 on "
                         f"{path.name} and an 'x0' model gives no eps_hat: set "
                         "config.path.t_min > 0 (e.g. 1e-3)")


def likelihood_metrics(names: Sequence[str], model_fn: Callable, path, target: str,
                       x: np.ndarray, *, kind: str, labels: Optional[np.ndarray] = None,
                       divergence: str = "auto", seed: int = 0, params: Any = None,
                       cond: Optional[dict] = None,
                       sharding: Optional[jax.sharding.Sharding] = None) -> dict[str, float]:
    """The model metrics ``names`` of test data ``x: [N, ...]`` (see the module docstring).

    Args:
      model_fn: ``f(params, x, t, cond)`` with ``params`` (e.g. ``Denoiser.fn``: the weights
        are then arguments of the compiled solve, not constants), else ``f(x, t[, cond])``.
      x: data as the model sees it (images in [-1, 1] on the uint8 grid, points as stored).
      kind: ``"image"`` (dequantised, bits/dim available) or ``"points"``.
      labels: ``[N]`` ints for a class-conditional ``model_fn`` (shorthand for
        ``cond={"label": labels}``), else None.
      cond: the condition pytree of ``x`` (leaves ``[N, ...]``), else None.
      divergence: ``"auto"``, ``"exact"`` or ``"hutchinson"``.
      seed: dequantisation noise and Hutchinson probes.
      sharding: where the examples go (e.g. the batch split over a device mesh, as the
        trainer's evaluation does): the compiled solve then runs data-parallel. Every process
        passes the whole ``x``. None: default placement.
    """
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; valid choices: "
                         f"{', '.join(DIVERGENCES)}")
    dim = math.prod(x.shape[1:])
    if divergence == "auto":
        divergence = "exact" if dim <= EXACT_MAX_DIM else "hutchinson"
    if labels is not None and cond is not None:
        raise ValueError("pass the condition once: labels= is shorthand for cond={'label': ...}")
    if labels is not None:
        cond = {"label": jnp.asarray(labels, jnp.int32)}
    k_deq, k_probe = jax.random.split(jax.random.PRNGKey(seed))
    y = jnp.asarray(x, jnp.float32)
    if kind == "image":
        k = np.rint((np.asarray(x, np.float64) + 1.0) * 127.5)
        y = likelihood.dequantize(k, k_deq, jnp.float32)
    if sharding is not None:
        y, cond = _place((y, cond), sharding)
    logp, _ = likelihood.log_likelihood(model_fn, path, y, k_probe, target=target,
                                        params=params, cond=cond, divergence=divergence)
    nll = -np.asarray(logp, np.float64)
    out = {"nll": float(np.mean(nll)),
           "nll_stderr": float(np.std(nll, ddof=1) / math.sqrt(nll.size)) if nll.size > 1
           else float("nan")}
    if "bits_per_dim" in names:
        out["bits_per_dim"] = float(np.mean(likelihood.bits_per_dim_from_logp(-nll, dim)))
    return {k: v for name in names for k, v in out.items() if k in REPORTS[name]}


def _place(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Every array of ``tree`` (leading axis = examples) laid out by ``sharding``."""
    def put(a):
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree_util.tree_map(put, tree)


__all__ = ["DIVERGENCES", "EXACT_MAX_DIM", "MODEL_METRIC_KINDS", "REPORTS", "check",
           "likelihood_metrics"]
