"""Figure 3: noise drowns fine detail first, and sampling restores it last.

With the orthonormal 2-D DFT, white noise ``eps`` has unit expected power in every
coefficient, so the SNR of the spatial-frequency band ``b`` at time ``t`` is

    SNR_b(t) = alpha(t)^2 P_b / sigma(t)^2,      P_b = mean |DFT(x0)_k|^2 over k in b,

and band ``b`` drowns (SNR_b = 1) at ``t_b = t(lambda = -log P_b)``. Natural images, digits
included, have power falling with frequency, so high bands drown at smaller ``t``
(Dieleman 2024, "Diffusion is spectral autoregression"; Rissanen et al. 2023).

The reverse half follows ``x0_hat`` of the exact digits mixture along one sampling
trajectory of :func:`diffjax.sample` and measures, per band, how much of the final sample's
own structure (its difference from the data mean) ``x0_hat`` has not yet settled.

Resolution caveat: an 8x8 image has only 64 DFT coefficients, grouped here into the DC term
and four radial shells ``|k| ~ 1, 2, 3, >= 3.5`` cycles per image. That is enough to see the
ordering, not a power law; upsampling would add bands whose content comes from the
interpolation kernel rather than from the data, so we do not.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import paths
from experiments.intuition import common

PATH = "ddpm"
SAMPLER = "ddpm"
BAND_NAMES = ("DC", "|k|≈1", "|k|≈2", "|k|≈3", "|k|≥3.5")
BAND_COLORS = ("0.55", "C0", "C1", "C2", "C3")
# Relative error of x0_hat below which a band counts as "settled" along the trajectory.
SETTLED = 0.5
MAX_CURVE_POINTS = 101


def band_index(height: int, width: int) -> np.ndarray:
    """``[H, W]`` band of each DFT coefficient: 0 = DC, then radial shells rounded to
    whole cycles per image, the outermost shell collecting everything beyond."""
    ky = np.fft.fftfreq(height) * height
    kx = np.fft.fftfreq(width) * width
    radius = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return np.minimum(np.round(radius), len(BAND_NAMES) - 1).astype(int)


def band_power(x: np.ndarray) -> np.ndarray:
    """Mean ``|DFT|^2`` (orthonormal) per band of images ``[N, H, W, C]`` -> ``[num_bands]``."""
    x = np.asarray(x, np.float64)
    power = np.abs(np.fft.fft2(x, axes=(1, 2), norm="ortho")) ** 2
    bands = band_index(*x.shape[1:3])
    return np.array([power[:, bands == b, :].mean() for b in range(len(BAND_NAMES))])


# -- forward: SNR per band ---------------------------------------------------------------
def forward_numbers(x0: np.ndarray, t: np.ndarray, key: jax.Array) -> dict:
    """Per-band SNR along ``t`` from the data spectrum, and the measured spectrum of ``x_t``."""
    path = paths.get(PATH)
    p_data = band_power(x0)
    with jax.enable_x64(True):
        t64 = np.asarray(t, np.float64)
        logsnr = np.asarray(path.logsnr(t64))
        drown_t = np.asarray(path.t_from_logsnr(-np.log(p_data)))
        alpha, sigma = np.asarray(path.alpha(t64)), np.asarray(path.sigma(t64))
    snr_db = common.snr_db(logsnr[None, :] + np.log(p_data)[:, None])   # [bands, T]
    xt_power = np.stack([_noised_power(path, x0, ti, k)
                         for ti, k in zip(t, jax.random.split(key, len(t)))], axis=1)
    return {"t": t, "data_power": p_data, "snr_db": snr_db, "drown_t": drown_t,
            "xt_power": xt_power, "alpha": alpha, "sigma": sigma}


def _noised_power(path, x0: np.ndarray, t: float, key: jax.Array) -> np.ndarray:
    eps = jax.random.normal(key, x0.shape)
    x_t = path.marginal(jnp.asarray(x0), eps, jnp.full((x0.shape[0],), t, jnp.float32))
    return band_power(np.asarray(x_t))


# -- reverse: x0_hat along a trajectory --------------------------------------------------
def reverse_numbers(mix, num: int, num_steps: int, key: jax.Array) -> dict:
    """``x0_hat`` of the exact mixture along one ancestral-sampling trajectory, per band."""
    path = paths.get(PATH)
    shape = (num,) + mix.event_shape
    _, info = diffjax.sample(mix.model_fn(path, "eps"), path, shape, key, target="eps",
                             sampler=SAMPLER, num_steps=num_steps, return_trajectory=True)
    # x0_hat at ~100 of the grid times is plenty for a curve, and bounds the memory.
    keep = np.unique(np.linspace(0, len(info.ts) - 1, MAX_CURVE_POINTS).round().astype(int))
    traj, ts = np.asarray(info.trajectory)[keep], np.asarray(info.ts)[keep]
    # One batched call over all grid times: x0_hat of the exact mixture is per example.
    flat_x = traj.reshape((-1,) + shape[1:])
    flat_t = np.repeat(ts, num).astype(flat_x.dtype)
    x0_hat = np.asarray(jax.jit(lambda x, t: mix.x0_hat(path, x, t))(flat_x, flat_t))
    x0_hat = x0_hat.reshape(traj.shape)                                   # [K+1, N, ...]
    final = x0_hat[-1]
    structure = band_power(final - mix.mean().reshape(mix.event_shape))
    rel_err = np.stack([band_power(x - final) for x in x0_hat]) / structure   # [K+1, bands]
    return {"t": ts, "rel_err": rel_err, "settle_t": _settle_times(ts, rel_err),
            "x0_hat": x0_hat, "final_structure_power": structure}


def _settle_times(ts: np.ndarray, rel_err: np.ndarray) -> np.ndarray:
    """Per band, the largest ``t`` after which ``rel_err`` stays below :data:`SETTLED`."""
    settle = np.empty(rel_err.shape[1])
    for b in range(rel_err.shape[1]):
        above = np.flatnonzero(rel_err[:, b] >= SETTLED)          # ts decrease along axis 0
        settle[b] = ts[above[-1] + 1] if len(above) and above[-1] + 1 < len(ts) else ts[0]
    return settle


# -- drawing -------------------------------------------------------------------------------
def _draw_spectra(ax, fwd: dict, show_t) -> None:
    centres = np.arange(len(BAND_NAMES))
    ax.plot(centres, fwd["data_power"], "k-o", ms=3, label="clean data (t=0)")
    for i in show_t:
        line, = ax.plot(centres, fwd["xt_power"][:, i], "-o", ms=3, label=f"x_t, t={fwd['t'][i]:.2f}")
        ax.axhline(fwd["sigma"][i] ** 2, color=line.get_color(), lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xticks(centres, BAND_NAMES, fontsize=7)
    ax.set_ylabel("power per DFT coefficient")
    ax.set_title("(a) spectrum of x_t; dotted: its noise floor σ²", fontsize=9)
    ax.legend(fontsize=6.5)


def _draw_band_snr(ax, fwd: dict) -> None:
    for b, (name, color) in enumerate(zip(BAND_NAMES, BAND_COLORS)):
        ax.plot(fwd["t"], fwd["snr_db"][b], label=name, color=color)
        ax.axvline(fwd["drown_t"][b], color=color, lw=0.8, ls="--")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_ylim(-30, 30)
    ax.set_xlabel("t  (forward: data → noise)")
    ax.set_ylabel("band SNR  [dB]")
    ax.set_title("(b) SNR per band; dashed: where it drowns (0 dB)", fontsize=9)
    ax.legend(fontsize=7)


def _draw_reverse(ax, rev: dict) -> None:
    for b, (name, color) in enumerate(zip(BAND_NAMES, BAND_COLORS)):
        ax.plot(rev["t"], rev["rel_err"][:, b], label=name, color=color, ls="-." if b == 0 else "-")
        if b:
            ax.axvline(rev["settle_t"][b], color=color, lw=0.8, ls="--")
    ax.axhline(SETTLED, color="k", lw=0.5, ls=":")
    ax.set_xlim(1.0, 0.0)
    ax.set_ylim(0.0, 1.3)
    ax.set_xlabel("t  (sampling: noise → data)")
    ax.set_ylabel("unsettled fraction of the band")
    ax.set_title("(c) x0_hat along a trajectory: |x0_hat - final|² / |final - mean|²", fontsize=9)
    ax.legend(fontsize=7)


def _draw_strip(subfig, rev: dict, rows: int = 3, cols: int = 9) -> None:
    steps = np.linspace(0, len(rev["t"]) - 1, cols).round().astype(int)
    axes = subfig.subplots(rows, cols)
    for r in range(rows):
        for c, k in enumerate(steps):
            common.show_image(axes[r, c], rev["x0_hat"][k, r])
            if r == 0:
                axes[r, c].set_title(f"t={rev['t'][k]:.2f}", fontsize=7)
    subfig.suptitle("(d) x0_hat along three trajectories: blobs first, strokes last", fontsize=9)


def make(out_dir: str, *, fast: bool = False, seed: int = 0) -> dict:
    """Draws ``spectrum.png``; returns forward band SNRs and reverse settling times."""
    key_fwd, key_rev = jax.random.split(jax.random.PRNGKey(seed))
    x0, _ = common.digits("test")
    t = np.linspace(0.0, 1.0, 51 if fast else 201)[1:]
    fwd = forward_numbers(x0, t, key_fwd)
    mix = common.digits_mixture()
    rev = reverse_numbers(mix, 64 if fast else 256, 100 if fast else 1000, key_rev)
    fig = common.new_figure(15, 8)
    top, bottom = fig.subfigures(2, 1)
    ax_a, ax_b = top.subplots(1, 2)
    _draw_spectra(ax_a, fwd, np.searchsorted(t, [0.1, 0.3, 0.5, 0.7]))
    _draw_band_snr(ax_b, fwd)
    left, right = bottom.subfigures(1, 2)
    _draw_reverse(left.subplots(), rev)
    _draw_strip(right, rev)
    fig.suptitle("Where structure dies first: 8x8 digits on the ddpm path", fontsize=10)
    png = common.save(fig, out_dir, "spectrum")
    return {"png": png, "bands": BAND_NAMES, "forward": fwd, "reverse": rev}
