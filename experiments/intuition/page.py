"""``python -m experiments.intuition --html=DIR``: the gallery as a page with sliders.

Writes ``DIR/index.html`` (inline CSS and JavaScript, no network) and the PNG frames it
shows under ``DIR/<panel>/``. Every slider position is a precomputed frame and every number
on the page is a value the library computed for that frame (:mod:`.frames`); the page only
swaps them. ``index.html#forward=3&steps=1`` opens with those slider positions (the browser
test uses this). Once loaded, the page writes into ``#resource-log`` its own URL, every
resource the browser timed and each image's resolved URL and whether it decoded.

Panels are built in the order of `PANELS`. Hook for the text-to-image panels (a prompt at
w = 0 ... 12 with ``shapes_eval`` adherence and diversity): they need a trained
``configs/shapes_t2i.py`` checkpoint, so none is built yet. Add a builder
``(out_dir, ctx) -> panel`` to `PANELS` that samples that checkpoint with the scales of
:mod:`.guidance_panel` and states the checkpoint and command in the panel's ``model`` and
``command`` fields; the page and its tests take any panel of the :mod:`.frames` layout.
"""
from __future__ import annotations

import html
import json
import os
import time
from typing import Callable, Optional

from experiments.intuition import guidance_panel, opening_failure, panels

PAGE = "index.html"


def _opening(out_dir: str, ctx: dict) -> dict:
    result = opening_failure.run(ctx["classifier"], fast=ctx["fast"], seed=ctx["seed"])
    ctx["results"]["opening"] = result
    return opening_failure.panel(out_dir, result, fast=ctx["fast"], seed=ctx["seed"])


PANELS: dict[str, Callable[[str, dict], dict]] = {
    "forward": lambda d, c: panels.forward_panel(d, fast=c["fast"], seed=c["seed"]),
    "reverse": lambda d, c: panels.reverse_panel(d, fast=c["fast"], seed=c["seed"]),
    "steps": lambda d, c: panels.steps_panel(d, fast=c["fast"], seed=c["seed"]),
    "guidance": lambda d, c: guidance_panel.guidance_panel(
        d, classifier=c["classifier"], fast=c["fast"], seed=c["seed"]),
    "opening": _opening,
}


def build(out_dir: str, *, fast: bool = False, seed: int = 0, classifier=None,
          cache_dir: Optional[str] = None, only: Optional[list[str]] = None,
          verbose: bool = True, t2i_workdir: Optional[str] = None) -> dict:
    """Computes every panel (or those in ``only``), writes the page; returns
    ``{"html": path, "panels": [panel, ...], "results": {"opening": opening_failure.run}}``.
    ``t2i_workdir`` (a trained ``configs/shapes_t2i.py`` run) adds the prompt panel."""
    available = dict(PANELS)
    names = only or list(PANELS)
    if t2i_workdir:
        from experiments.intuition import prompt_panel
        available["prompt"] = lambda d, c: prompt_panel.prompt_panel(
            d, t2i_workdir, fast=c["fast"], seed=c["seed"])
        names = names if "prompt" in names else [*names, "prompt"]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown page panel(s) {unknown}; valid panels: {', '.join(PANELS)}")
    needs_classifier = {"guidance", "opening"} & set(names)
    ctx = {"fast": fast, "seed": seed, "classifier": classifier, "results": {}}
    if needs_classifier and classifier is None:
        ctx["classifier"] = opening_failure.load_classifier(cache_dir)
    built = []
    for name in names:
        start = time.time()
        built.append(available[name](out_dir, ctx))
        if verbose:
            print(f"page panel {name}: {len(built[-1]['frames'])} frames "
                  f"({time.time() - start:.1f} s)", flush=True)
    path = os.path.join(out_dir, PAGE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(built))
    return {"html": path, "panels": built, "results": ctx["results"]}


def _numbers_html(pid: str, j: int, cell: dict) -> str:
    rows = "".join(f'<dt>{html.escape(k)}</dt><dd data-label="{html.escape(k)}">'
                   f"{html.escape(v)}</dd>" for k, v in cell.items())
    return f'<dl id="num-{pid}-{j}">{rows}</dl>'


def _panel_html(p: dict) -> str:
    pid, n = p["id"], len(p["frames"])
    cols = "".join(
        f'<figure><figcaption>{html.escape(c)}</figcaption>'
        f'<img id="img-{pid}-{j}" src="{html.escape(p["frames"][0][j])}" alt="{html.escape(c)}">'
        f'{_numbers_html(pid, j, p["numbers"][0][j])}</figure>'
        for j, c in enumerate(p["columns"]))
    return (f'<section id="panel-{pid}" data-position="0"><h2>{html.escape(p["title"])}</h2>'
            f'<p>{html.escape(p["about"])}</p>'
            f'<p class="src">model: {html.escape(p["model"])}<br>made by: '
            f'<code>{html.escape(p["command"])}</code></p>'
            f'<label>{html.escape(p["slider"]["name"])} = <span id="value-{pid}">'
            f'{html.escape(p["slider"]["values"][0])}</span><br>'
            f'<input type="range" id="slider-{pid}" min="0" max="{n - 1}" step="1" value="0">'
            f'</label><div class="row">{cols}</div></section>')


STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
section{border-top:1px solid #ccc;padding:.5em 0}
.row{display:flex;flex-wrap:wrap;gap:1.5em}
figure{margin:0}img{image-rendering:pixelated;max-width:640px}
input[type=range]{width:480px}
dl{display:grid;grid-template-columns:auto auto;gap:0 .8em;font-size:90%}
dd{margin:0;font-family:monospace}.src{font-size:85%;color:#555}
#resource-log{font-size:70%;color:#888;white-space:pre-wrap}
"""

# Moving a slider swaps in the precomputed frame and numbers of that position; a hash such as
# "#forward=3&steps=1" sets positions at load through the same input handler.
SCRIPT = """
const PANELS = JSON.parse(document.getElementById('panel-data').textContent);
function show(p, i) {
  document.getElementById('panel-' + p.id).dataset.position = i;
  document.getElementById('value-' + p.id).textContent = p.slider.values[i];
  p.columns.forEach((c, j) => {
    document.getElementById('img-' + p.id + '-' + j).src = p.frames[i][j];
    const dl = document.getElementById('num-' + p.id + '-' + j);
    for (const dd of dl.querySelectorAll('dd')) dd.textContent = p.numbers[i][j][dd.dataset.label];
  });
}
const wanted = new URLSearchParams(location.hash.slice(1));
for (const p of PANELS) {
  const s = document.getElementById('slider-' + p.id);
  s.addEventListener('input', () => show(p, Number(s.value)));
  if (wanted.has(p.id)) { s.value = wanted.get(p.id); s.dispatchEvent(new Event('input')); }
}
window.addEventListener('load', () => {
  const log = {page: location.href,
               resources: performance.getEntriesByType('resource').map(e => e.name),
               images: Array.from(document.images, im => [im.currentSrc, im.naturalWidth > 0])};
  document.getElementById('resource-log').textContent = JSON.stringify(log);
});
"""


def render(built: list[dict]) -> str:
    """The page: one section per panel, its data as JSON, inline style and script."""
    data = [{k: p[k] for k in ("id", "slider", "columns", "frames", "numbers")} for p in built]
    # "</" cannot end the JSON script element early once escaped.
    blob = json.dumps(data).replace("</", "<\\/")
    body = "".join(_panel_html(p) for p in built)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>diffjax: intuition you can drag</title><style>{STYLE}</style></head><body>"
            f"<h1>diffjax: intuition you can drag</h1><p>Every frame and number below was "
            f"computed by diffjax before this page was written; the sliders only choose among "
            f"them. See experiments/intuition/README.md.</p>{body}"
            f"<pre id=\"resource-log\"></pre>"
            f"<script id=\"panel-data\" type=\"application/json\">{blob}</script>"
            f"<script>{SCRIPT}</script></body></html>")

