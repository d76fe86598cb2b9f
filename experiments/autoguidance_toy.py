"""Autoguidance vs classifier-free guidance on an exact 2-D mixture (EDM2's toy idea).

Karras et al. 2024 ("Guiding a diffusion model with a bad version of itself", Sec. 3 and
Fig. 2, NVlabs/edm2 ``toy_example.py``) show on a 2-D class-conditional distribution of thin
branching "trees" that classifier-free guidance (CFG) pushes samples towards the outskirts of
the class, while guiding a model with a *weaker version of itself* (autoguidance)
concentrates them on the data. Here every model is an exact Gaussian mixture (no training,
so every effect is the guidance's):

* data: two classes of trees growing from the origin in opposite directions, 6 levels of
  branches, each branch 8 elongated Gaussians (1008 components; :func:`tree`);
* main model D_c: the exact class-conditional denoiser of that mixture;
* ``cfg``: D_u + w (D_c - D_u), D_u the exact unconditional (both classes) denoiser;
* ``cfg_weak``: the same with a *weakened* unconditional model (EDM2's own CFG demo guides
  with a smaller, less-trained unconditional network);
* ``auto`` (autoguidance): D_g + w (D_c - D_g), D_g the class-conditional denoiser of the
  same mixture with every component ``--broaden`` times wider (a "weaker" model: limited
  capacity or training blurs the thin branches);

all sampled with Heun's probability-flow ODE on the EDM path (``--steps`` evaluations, Karras
grid) from the same noise. Reported per scale ``w``: the fraction of samples *outside the
data support* (below the log-density that 99% of exact samples of their class exceed,
i.e. outside the 99% highest-density region), and the sliced Wasserstein-2 distance to exact
samples of the same classes (next to its floor: exact vs exact). Writes ``results.md``,
``results.csv`` and ``autoguidance_toy.png`` (samples at each scale) under ``--out``.

``--models=trained`` replaces the exact denoisers by small MLPs trained on the same mixture
(EDM2's toy recipe, ``toy_example.py``: every network regresses on the exact noised denoiser;
``--main_fit``/``--guide_fit=samples`` fit to samples instead; :func:`train`), since the
off-data samples of
EDM2's CFG come from the errors of trained networks: a class-conditional main model (EDM
preconditioning, EDM loss, log-normal noise levels, Adam with inverse-sqrt decay,
power-function EMA; label dropout so it has an unconditional branch), CFG with that branch
(``cfg``) or with a separately trained small, short-trained unconditional MLP (``cfg_small``,
EDM2's toy CFG), and autoguidance with a small, short-trained class-conditional MLP (``auto``).
Same metrics and support; writes ``autoguidance_toy_trained.png``.

    python experiments/autoguidance_toy.py [--out runs/experiments/autoguidance_toy] [--quick]
    python experiments/autoguidance_toy.py --models=trained [--out ...] [--quick]
        [--main_steps=4096] [--main_width=64] [--main_blocks=4] [--main_fit=exact|samples]
        [--guide_steps=512] [--guide_width=32] [--guide_fit=exact|samples] [--sigma_max=S]

Trained networks are kept (EMA parameters, keyed by everything that determines them) in
``autoguidance_toy_nets/`` next to ``--out``, so runs that differ only in the guide reuse the
main model.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import atomic, paths
from diffjax.analytic import GaussianMixture
from diffjax.evaluate.distances import sliced_wasserstein

SCALES = (1.0, 2.0, 3.0, 4.0, 6.0, 10.0)
CLASSES = 2
INSIDE = 0.99   # the support: the highest-density region holding 99% of a class's mass
FAR = 1.5       # samples beyond this radius have left the plot (the data lie within 1.1)


def tree(std_scale: float = 1.0, depth: int = 6, seed: int = 2) -> GaussianMixture:
    """Two classes of thin branching "trees" growing from the origin in opposite directions
    (EDM2's toy distribution in spirit): each branch is 8 elongated Gaussians along it,
    splitting in two at its end, thinner and shorter at each level. ``std_scale``
    broadens every component (the guide)."""
    rng = np.random.default_rng(seed)
    weights, means, covs, labels = [], [], [], []

    def grow(cls, level, pos, angle):
        if level >= depth:
            return
        direction = np.array([np.cos(angle), np.sin(angle)])
        length = 0.3 * 0.8**level * (1 + 0.2 * rng.normal())
        along, across = 0.06 * length, 0.2 * 0.8**level * 0.06
        normal = np.array([-direction[1], direction[0]])
        cov = along**2 * np.outer(direction, direction) + across**2 * np.outer(normal, normal)
        for s in np.linspace(0.07, 0.93, 8):
            weights.append(length * 0.5**level)
            means.append(pos + direction * length * s)
            covs.append(cov * std_scale**2)
            labels.append(cls)
        for sign in (1, -1):
            grow(cls, level + 1, pos + direction * length,
                 angle + sign * 0.7**level * (1 + 0.2 * rng.normal()))

    grow(0, 0, np.zeros(2), np.pi / 4)
    grow(1, 0, np.zeros(2), 5 * np.pi / 4)
    return GaussianMixture(np.asarray(weights), np.asarray(means), np.asarray(covs),
                           labels=np.asarray(labels))


def mixture(std_scale: float = 1.0) -> GaussianMixture:
    return tree(std_scale)


def log_density(x: np.ndarray, labels: np.ndarray, data: GaussianMixture) -> np.ndarray:
    """``log p_0(x | label)`` of each sample (t = 0 on the EDM path: the data density)."""
    path = paths.get("edm")
    t = jnp.full((len(x),), path.t_min)
    return np.asarray(data.log_prob_t(path, jnp.asarray(x), t, jnp.asarray(labels)))


def support_threshold(data: GaussianMixture, n: int) -> np.ndarray:
    """Per class, the log-density above which ``INSIDE`` of exact samples lie."""
    x, labels = exact(n, seed=3)
    logp = log_density(x, labels, data)
    return np.array([np.quantile(logp[labels == c], 1 - INSIDE) for c in range(CLASSES)])


def outside(x: np.ndarray, labels: np.ndarray, data: GaussianMixture,
            threshold: np.ndarray) -> np.ndarray:
    """Whether each sample lies outside its class's 99% highest-density region."""
    return log_density(x, labels, data) < threshold[labels]


KINDS = {"cfg": "CFG, exact unconditional model",
         "cfg_weak": "CFG, weakened unconditional model",
         "auto": "autoguidance, weakened conditional model"}


def draw(kind: str, w: float, n: int, steps: int, broaden: float, seed: int = 0):
    """``n`` samples (alternating classes) guided by ``kind`` (:data:`KINDS`) at scale ``w``."""
    data, path = mixture(), paths.get("edm")
    main = data.conditional_model_fn(path, "x0")
    labels = jnp.arange(n) % CLASSES
    options = dict(target="x0", sampler="heun", num_steps=steps, grid="karras",
                   cond={"label": labels}, guidance_scale=w)
    weak = mixture(broaden).conditional_model_fn(path, "x0")
    null = {"label": jnp.full((n,), CLASSES)}   # the null label: the whole mixture
    if kind == "cfg":
        options["uncond"] = null
    elif kind == "cfg_weak":   # EDM2's CFG demo: a smaller, less-trained unconditional model
        options.update(guide_fn=lambda x, t, cond: weak(x, t, null), guide_target="x0")
    else:
        options.update(guide_fn=weak, guide_target="x0")
    x = diffjax.sample(main, path, (n, 2), jax.random.PRNGKey(seed), **options)
    return np.asarray(x), np.asarray(labels)


def exact(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    data = mixture()
    parts = [np.asarray(data.sample(jax.random.PRNGKey(seed * 10 + c), n // CLASSES, c)[0])
             for c in range(CLASSES)]
    x = np.stack(parts, 1).reshape(n, 2)          # interleaved: row i has class i % 2
    return x, np.arange(n) % CLASSES


def distance(x, labels, reference, ref_labels) -> float:
    """Mean over classes of the sliced W2 to exact samples of that class."""
    return float(np.mean([sliced_wasserstein(x[labels == c], reference[ref_labels == c])
                          for c in range(CLASSES)]))


def sweep(draw_at, kinds, data, threshold, reference, ref_labels, out_dir: str):
    """Every guidance ``kind`` at every scale of ``SCALES``: ``draw_at(kind, w) -> (x,
    labels)`` scored by the share outside the support and the sliced W2; rows go to
    ``out_dir/results.csv``. Returns the rows and the samples by ``(kind, w)``."""
    rows, shown = [], {}
    for w in SCALES:
        for kind in kinds:
            x, labels = draw_at(kind, w)
            rows.append({"guidance": kind, "w": w,
                         "outside": float(outside(x, labels, data, threshold).mean()),
                         "sliced_w2": distance(x, labels, reference, ref_labels),
                         "far": int(np.sum(~(np.linalg.norm(x, axis=-1) <= FAR)))})
            shown[kind, w] = (x, labels)
            print(f"{kind:9s} w={w:<4g} outside={rows[-1]['outside']:.3f} "
                  f"sliced_w2={rows[-1]['sliced_w2']:.4f}", flush=True)
    atomic.write_csv(os.path.join(out_dir, "results.csv"), rows)
    return rows, shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/experiments/autoguidance_toy")
    parser.add_argument("--quick", action="store_true", help="2000 samples, 32 steps")
    parser.add_argument("--broaden", type=float, default=2.0,
                        help="the guide's component std / the data's")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--models", choices=("exact", "trained"), default="exact",
                        help="exact mixtures (default) or MLPs trained on the mixture's samples")
    parser.add_argument("--seed", type=int, default=0, help="training seed (--models=trained)")
    parser.add_argument("--main_steps", type=int, default=4096,
                        help="--models=trained: the main model's training steps")
    parser.add_argument("--main_width", type=int, default=64,
                        help="--models=trained: the main model's hidden width")
    parser.add_argument("--main_blocks", type=int, default=4,
                        help="--models=trained: the main model's residual blocks")
    parser.add_argument("--main_fit", choices=("samples", "exact"), default="exact",
                        help="--models=trained: the main model's regression target (train())")
    parser.add_argument("--guide_steps", type=int, default=512,
                        help="--models=trained: the autoguidance guide's training steps")
    parser.add_argument("--guide_width", type=int, default=32,
                        help="--models=trained: the autoguidance guide's hidden width")
    parser.add_argument("--sigma_max", type=float, default=None,
                        help="--models=trained: the sampler's first noise level (default: the "
                             "edm path's 80; EDM2's toy samples from 5)")
    parser.add_argument("--guide_fit", choices=("samples", "exact"), default="exact",
                        help="--models=trained: the guides' regression target (both guides; "
                             "EDM2's toy fits every network to the exact score)")
    args = parser.parse_args()
    if args.models == "trained":
        return main_trained(args)
    n, steps = (2000, 32) if args.quick else (10000, args.steps)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    data = mixture()
    reference, ref_labels = exact(n, seed=1)
    truth, truth_labels = exact(n, seed=2)
    floor = distance(truth, truth_labels, reference, ref_labels)
    threshold = support_threshold(data, n)
    exact_outside = float(outside(truth, truth_labels, data, threshold).mean())
    rows, shown = sweep(lambda kind, w: draw(kind, w, n, steps, args.broaden), KINDS, data,
                        threshold, reference, ref_labels, args.out)
    lines = [f"exact samples: outside {exact_outside:.3f}, sliced W2 floor {floor:.4f} "
             f"({n} samples, {steps} Heun NFE, weakened = components x{args.broaden:g} wider)",
             "", "| w | " + " | ".join(f"outside: {k}" for k in KINDS) + " | "
             + " | ".join(f"sliced W2: {k}" for k in KINDS) + " |",
             "|---" * (1 + 2 * len(KINDS)) + "|"]
    for w in SCALES:
        got = {r["guidance"]: r for r in rows if r["w"] == w}
        lines.append(f"| {w:g} | " + " | ".join(f"{got[k]['outside']:.3f}" for k in KINDS)
                     + " | " + " | ".join(f"{got[k]['sliced_w2']:.4f}" for k in KINDS) + " |")
    lines.append(f"\n{time.time() - start:.0f} s")
    atomic.write_text(os.path.join(args.out, "results.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(shown, data, os.path.join(args.out, "autoguidance_toy.png"))


def _plot(shown, data: GaussianMixture, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(KINDS), len(SCALES), figsize=(2.6 * len(SCALES), 2.7 * len(KINDS)))
    for row, kind in enumerate(KINDS):
        for col, w in enumerate(SCALES):
            ax = axes[row, col]
            x, labels = shown[kind, w]
            for c, color in enumerate(("tab:blue", "tab:orange")):
                ax.scatter(*x[labels == c][:1500].T, s=1, color=color, alpha=0.5)
            ax.scatter(*data.means.T, s=0.2, color="k", alpha=0.3)   # the branches
            ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), xticks=[], yticks=[], aspect="equal",
                   title=f"{kind} w={w:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# -- trained models (--models=trained) ------------------------------------------------------
# EDM2's toy recipe (Karras et al. 2024, NVlabs/edm2 toy_example.py): an MLP denoiser with EDM
# preconditioning, noise levels log-normal(P_mean=-2.3, P_std=1.5), batch 4096, Adam
# (betas 0.9, 0.99) at lr 1e-2 / sqrt(max(step / 512, 1)), a power-function EMA of std 0.010;
# main model 64 wide for 4096 steps, guides 32 wide stopped at step 512. EDM2 regresses on the
# exact noised score of its mixture; ``--main_fit=exact`` does the same for the main model
# (the EDM loss against the exact denoiser at the noisy input, :func:`train`), ``--guide_fit``
# for both guides; ``exact`` is the default of both, ``samples`` (the EDM denoising loss on
# fresh samples of the mixture) the ablation. Other differences: EDM2 has magnitude-preserving layers and an energy
# (log-density) output, here diffjax's residual MLP (``diffjax.models.MLP``, Fourier noise
# embedding, learned labels); an EDM2-style energy MLP fit to the exact score was tried
# (seed 0: its unguided main model left 12.6% of samples outside, worse than this MLP's 8%).

TRAINED_KINDS = {"cfg": "CFG, the main model's own unconditional branch (label dropout)",
                 "cfg_small": "CFG, a small short-trained unconditional MLP (EDM2's toy CFG)",
                 "auto": "autoguidance, a small short-trained class-conditional MLP"}
SHOWN_SCALES = (1.0, 2.0, 4.0, 10.0)


def models(quick: bool, main_steps: int = 4096, main_width: int = 64,
           main_blocks: int = 4, guide_steps: int = 512, guide_width: int = 32) -> dict:
    """The trained networks: name -> (hidden, residual blocks, steps, batch, label dropout,
    classes). ``guide_*`` size and train the autoguidance guide (EDM2's toy guides: 32 wide,
    512 steps); ``uncond`` (EDM2's toy CFG guide) is always 32 wide, 512 steps; ``main_*``
    size and train the main model (EDM2: 64 wide, 4 blocks, 4096 steps). ``quick`` divides
    every length by 4 (and the batch by 4)."""
    steps, batch, short, uncond = (main_steps, 4096, guide_steps, 512)
    if quick:
        steps, batch, short, uncond = steps // 4, batch // 4, short // 4, uncond // 4
    return {"main": (main_width, main_blocks, steps, batch, 0.1, CLASSES),
            "guide": (guide_width, 4, short, batch, 0.0, CLASSES),
            "uncond": (32, 4, uncond, batch, 0.0, 0)}


def cached_train(spec: tuple, data: GaussianMixture, seed: int, fit: str,
                 cache_dir: str) -> tuple:
    """:func:`train`, its EMA parameters kept in ``cache_dir`` under a name made of everything
    that determines them (spec, fit, seed), so a rerun with another guide reuses the main model.
    Returns ``(Denoiser, EMA params, final loss, cached?)``."""
    import flax.serialization

    name = "_".join(str(v) for v in spec) + f"_{fit}_seed{seed}"
    file = os.path.join(cache_dir, f"net_{name}.msgpack")
    if os.path.exists(file):
        den = denoiser(spec[0], spec[1], spec[5])
        template = init_params(den, spec[5], jax.random.PRNGKey(0))
        with open(file, "rb") as f:
            blob = flax.serialization.msgpack_restore(f.read())
        return den, flax.serialization.from_state_dict(template, blob["params"]), \
            float(blob["loss"]), True
    den, params, loss = train(spec, data, jax.random.PRNGKey(seed), fit)
    os.makedirs(cache_dir, exist_ok=True)
    with atomic.replacing(file, binary=True) as f:
        f.write(flax.serialization.msgpack_serialize(
            {"params": flax.serialization.to_state_dict(jax.device_get(params)), "loss": loss}))
    return den, params, loss, False


def _data_sampler(data: GaussianMixture):
    """``(key, n) -> (x [n, 2], labels [n])``, jittable exact draws from the class mixture."""
    logits = np.full((CLASSES, data.num_components), -np.inf)
    for c in range(CLASSES):
        w = data._class_weights(c)
        logits[c, w > 0] = np.log(w[w > 0])
    logits = jnp.asarray(logits, jnp.float32)
    roots = jnp.asarray(np.einsum("kij,kj,klj->kil", data._evecs, np.sqrt(data._evals),
                                  data._evecs), jnp.float32)
    means = jnp.asarray(data.means, jnp.float32)

    def draw(key, n):
        k_label, k_comp, k_eps = jax.random.split(key, 3)
        labels = jax.random.randint(k_label, (n,), 0, CLASSES)
        comp = jax.random.categorical(k_comp, logits[labels])
        eps = jax.random.normal(k_eps, (n, 2))
        return means[comp] + jnp.einsum("nij,nj->ni", roots[comp], eps), labels
    return draw


def init_params(den, classes: int, key):
    """Fresh parameters of a :func:`denoiser`'s network (the tree a cached file restores to)."""
    cond = {"label": jnp.zeros((1,), jnp.int32)} if classes else {}
    return den.net.init(key, jnp.zeros((1, 2)), jnp.zeros((1,)), cond)["params"]


def denoiser(hidden: int, depth: int, classes: int):
    from diffjax.denoiser import Denoiser
    from diffjax.models.mlp import MLP
    net = MLP(hidden=hidden, depth=depth, embedding="fourier", num_classes=classes)
    return Denoiser(net, paths.get("edm"), "x0", preconditioning="edm", sigma_data=0.5)


def train(spec: tuple, data: GaussianMixture, key, fit: str = "samples") -> tuple:
    """Trains one network of :func:`models`; returns ``(Denoiser, EMA params, final loss)``.

    ``fit="samples"``: the EDM denoising loss against the clean sample ``x0`` the noisy input
    came from; ``fit="exact"``: against the mixture's exact denoiser ``E[x0 | x_t, label]`` at
    that input (EDM2's toy fits the exact noised score the same way): the same minimiser, the
    same inputs and weights, without the target's sampling noise."""
    import optax

    from diffjax import phema
    from diffjax.objectives import Objective

    hidden, depth, steps, batch, dropout, classes = spec
    den = denoiser(hidden, depth, classes)
    objective = Objective(den.path, "x0", weighting="edm", time_sampling="lognormal",
                          p_mean=-2.3, p_std=1.5, label_dropout=dropout, num_classes=classes)
    if fit not in ("samples", "exact"):
        raise ValueError(f"fit must be 'samples' or 'exact', got {fit!r}")
    draw = _data_sampler(data)
    k_init, k_train = jax.random.split(key)
    params = init_params(den, classes, k_init)
    schedule = lambda i: 1e-2 / jnp.sqrt(jnp.maximum(i / 512, 1.0))  # noqa: E731
    opt = optax.adam(schedule, b1=0.9, b2=0.99)
    gamma = phema.sigma_rel_to_gamma(0.010)

    def step(carry, i):
        params, opt_state, ema = carry
        k_data, k_loss = jax.random.split(jax.random.fold_in(k_train, i))
        x0, labels = draw(k_data, batch)
        cond = {"label": labels} if classes else {}
        if fit == "exact":
            t, eps, masks = objective.draw(k_loss, x0, cond)
            cond = objective.null_values.apply_masks(cond, masks)
            x_t = den.path.marginal(x0, eps, t)
            target = data.x0_hat(den.path, x_t, t, cond.get("label"))
            loss_fn = lambda p: jnp.mean(objective.loss_weight(t) * jnp.mean(  # noqa: E731
                (den.fn(p, x_t, t, cond) - target) ** 2, axis=-1))
        else:
            loss_fn = lambda p: objective(  # noqa: E731
                lambda x, t, c: den.fn(p, x, t, c), x0, k_loss, cond)[0]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        beta = phema.beta(i + 1.0, gamma)
        ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, ema, params)
        return (params, opt_state, ema), loss

    run = jax.jit(lambda carry: jax.lax.scan(step, carry, jnp.arange(steps)))
    (_, _, ema), losses = run((params, opt.init(params), params))
    return den, ema, float(jnp.mean(losses[-max(steps // 16, 1):]))


def draw_trained(kind: str, w: float, n: int, steps: int, nets: dict, seed: int = 0,
                 sigma_max: float | None = None):
    """``n`` samples (alternating classes) of the trained main model guided by ``kind``
    (:data:`TRAINED_KINDS`) at scale ``w``; the same initial noise for every kind and scale.
    ``sigma_max``: the first noise level (None: the ``edm`` path's 80; EDM2's toy starts at 5)."""
    main_den, main_params = nets["main"]
    labels = jnp.arange(n) % CLASSES
    options = dict(target="x0", sampler="heun", num_steps=steps, grid="karras",
                   params=main_params, cond={"label": labels}, guidance_scale=w)
    if sigma_max is not None:
        options["t_max"] = float(paths.get("edm").t_from_logsnr(-2.0 * np.log(sigma_max)))
    if kind == "cfg":
        options["num_classes"] = CLASSES          # the null label: the model's own branch
    elif kind == "cfg_small":
        unc_den, unc_params = nets["uncond"]
        options.update(guide_fn=lambda p, x, t, c: unc_den.fn(p, x, t, None),
                       guide_params=unc_params, guide_target="x0")
    else:
        guide_den, guide_params = nets["guide"]
        options.update(guide_fn=guide_den.fn, guide_params=guide_params, guide_target="x0")
    x = diffjax.sample(main_den.fn, paths.get("edm"), (n, 2), jax.random.PRNGKey(seed),
                       **options)
    return np.asarray(x), np.asarray(labels)


def main_trained(args) -> None:
    n, steps = (2000, 32) if args.quick else (10000, args.steps)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    data = mixture()
    reference, ref_labels = exact(n, seed=1)
    truth, truth_labels = exact(n, seed=2)
    floor = distance(truth, truth_labels, reference, ref_labels)
    threshold = support_threshold(data, n)
    exact_outside = float(outside(truth, truth_labels, data, threshold).mean())
    nets, trained = {}, []
    specs = models(args.quick, args.main_steps, args.main_width, args.main_blocks,
                   args.guide_steps, args.guide_width)
    for i, (name, spec) in enumerate(specs.items()):
        t0 = time.time()
        fit = args.main_fit if name == "main" else args.guide_fit
        den, params, loss, cached = cached_train(
            spec, data, 1000 * args.seed + i, fit,
            os.path.join(os.path.dirname(os.path.abspath(args.out)), "autoguidance_toy_nets"))
        nets[name] = (den, params)
        trained.append(f"{name}: {spec[0]} wide, {spec[1]} residual blocks, {spec[2]} steps of "
                       f"batch {spec[3]}, label dropout {spec[4]:g}, "
                       f"{'class-conditional' if spec[5] else 'unconditional'}, "
                       f"fit to {'the exact denoiser' if fit == 'exact' else 'samples'}; "
                       f"final loss {loss:.4f}; "
                       + ("read from the cache" if cached else f"{time.time() - t0:.0f} s"))
        print(trained[-1], flush=True)
    # the guides alone (w = 0) and the main model alone (w = 1), for reference
    alone = {}
    for label, kind, w in (("main model", "auto", 1.0), ("guide (auto, w=0)", "auto", 0.0),
                           ("main's unconditional branch (cfg, w=0)", "cfg", 0.0),
                           ("small unconditional (cfg_small, w=0)", "cfg_small", 0.0)):
        x, labels = draw_trained(kind, w, n, steps, nets, sigma_max=args.sigma_max)
        alone[label] = (float(outside(x, labels, data, threshold).mean()),
                        distance(x, labels, reference, ref_labels))
    rows, shown = sweep(lambda kind, w: draw_trained(kind, w, n, steps, nets,
                                                     sigma_max=args.sigma_max), TRAINED_KINDS,
                        data, threshold, reference, ref_labels, args.out)
    kinds = list(TRAINED_KINDS)
    lines = [f"exact samples: outside {exact_outside:.3f}, sliced W2 floor {floor:.4f} "
             f"({n} samples, {steps} Heun NFE from sigma "
             f"{args.sigma_max if args.sigma_max else paths.get('edm').sigma_max:g}, trained "
             f"models, seed {args.seed})", ""]
    lines += [f"- {t}" for t in trained] + [""]
    lines += [f"- {k}: outside {o:.3f}, sliced W2 {d:.4f}" for k, (o, d) in alone.items()]
    lines += ["", "| w | " + " | ".join(f"outside: {k}" for k in kinds) + " | "
              + " | ".join(f"sliced W2: {k}" for k in kinds) + " |",
              "|---" * (1 + 2 * len(kinds)) + "|"]
    for w in SCALES:
        got = {r["guidance"]: r for r in rows if r["w"] == w}
        lines.append(f"| {w:g} | " + " | ".join(f"{got[k]['outside']:.3f}" for k in kinds)
                     + " | " + " | ".join(f"{got[k]['sliced_w2']:.4f}" for k in kinds) + " |")
    lines.append(f"\nsamples beyond radius {FAR:g} (diverged; the data lie within 1.1), of {n}: "
                 + "; ".join(f"{k} " + ", ".join(f"w={r['w']:g}: {r['far']}" for r in rows
                                                 if r["guidance"] == k) for k in kinds))
    for kind in ("cfg", "cfg_small"):
        met = [w for w in SCALES
               if any(r["guidance"] == kind and r["w"] == w and r["outside"] >= 0.2 for r in rows)
               and any(r["guidance"] == "auto" and r["w"] == w and r["outside"] <= 0.05
                       for r in rows)]
        lines.append(f"\nbar (outside: {kind} >= 0.20 and auto <= 0.05 at the same w): "
                     + (f"met at w = {', '.join(f'{w:g}' for w in met)}" if met else "not met"))
    lines.append(f"\n{time.time() - start:.0f} s")
    atomic.write_text(os.path.join(args.out, "results.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot_trained(shown, data, threshold, os.path.join(args.out, "autoguidance_toy_trained.png"))


def _plot_trained(shown, data: GaussianMixture, threshold, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-1.1, 1.1, 220)
    xy = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    support = [(log_density(xy, np.full(len(xy), c), data) >= threshold[c]).reshape(220, 220)
               for c in range(CLASSES)]
    kinds = list(TRAINED_KINDS)
    fig, axes = plt.subplots(len(kinds), len(SHOWN_SCALES),
                             figsize=(2.7 * len(SHOWN_SCALES), 2.8 * len(kinds)))
    colors = ("tab:blue", "tab:orange")
    for row, kind in enumerate(kinds):
        for col, w in enumerate(SHOWN_SCALES):
            ax = axes[row, col]
            for c in range(CLASSES):   # each class's 99% highest-density region, shaded
                ax.contourf(grid, grid, support[c].astype(float), levels=[0.5, 1.5],
                            colors=["0.82"])
            x, labels = shown[kind, w]
            out = outside(x, labels, data, threshold)
            for c in range(CLASSES):
                ax.scatter(*x[labels == c][:1500].T, s=1, color=colors[c], alpha=0.5)
            ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), xticks=[], yticks=[], aspect="equal")
            ax.set_title(f"{kind} w={w:g}: {out.mean():.0%} out", fontsize=9)
    fig.suptitle("trained MLPs: samples (blue/orange classes) over each class's 99% "
                 "highest-density region (grey)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    from PIL import Image   # a 64-colour palette PNG: a third of the size
    Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
