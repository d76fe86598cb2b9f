"""Drives the page in headless Chromium (Debian's ``chromium``) and reads what it shows.

``dump_dom(page, positions)`` opens ``page#panel=i&...`` (the page's own slider handler moves
each slider there) with every network request sent to a dead proxy, and returns the DOM
after the page has run; ``read_page`` parses what a reader sees: per panel the slider's
position and value, the image sources and the numbers, plus the page's ``#resource-log``
(the URLs it loaded). ``screenshot`` saves a PNG of the same view.
"""
from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
import tempfile
from typing import Mapping, Optional

INSTALL_HINT = "apt-get update && apt-get install -y chromium"
TIMEOUT_S = 120
# Anything that is not a file of the page would go to this closed port and fail.
NO_NETWORK = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def find_chromium() -> Optional[str]:
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def page_url(page: str, positions: Optional[Mapping[str, int]] = None) -> str:
    url = "file://" + os.path.abspath(page)
    if positions:
        url += "#" + "&".join(f"{k}={int(v)}" for k, v in positions.items())
    return url


def _run(args: list[str]) -> str:
    exe = find_chromium()
    if exe is None:
        raise RuntimeError(f"headless Chromium not found; install it with: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--allow-file-access-from-files", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", *NO_NETWORK, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"chromium failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def dump_dom(page: str, positions: Optional[Mapping[str, int]] = None) -> str:
    """The DOM of ``page`` after its scripts ran with the sliders at ``positions``."""
    return _run(["--dump-dom", page_url(page, positions)])


def screenshot(page: str, png: str, positions: Optional[Mapping[str, int]] = None,
               width: int = 1200, height: int = 4200) -> str:
    _run([f"--screenshot={os.path.abspath(png)}", f"--window-size={width},{height}",
          "--hide-scrollbars", page_url(page, positions)])
    return png


class _Reader(html.parser.HTMLParser):
    """Collects elements with an ``id`` (attributes and text) and the ``dd`` of each ``dl``."""

    def __init__(self):
        super().__init__()
        self.elements: dict[str, dict] = {}
        self.numbers: dict[str, dict[str, str]] = {}
        self._open: list[tuple[str, Optional[str]]] = []
        self._dl: Optional[str] = None
        self._dd: Optional[str] = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.elements[attrs["id"]] = {"tag": tag, "attrs": attrs, "text": ""}
        if tag == "dl":
            self._dl = attrs.get("id")
            self.numbers[self._dl] = {}
        if tag == "dd" and self._dl:
            self._dd = attrs.get("data-label")
            self.numbers[self._dl][self._dd] = ""
        if tag not in ("img", "input", "meta", "br"):
            self._open.append((tag, attrs.get("id")))

    def handle_endtag(self, tag):
        if tag == "dd":
            self._dd = None
        if tag == "dl":
            self._dl = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self._dd is not None and self._dl:
            self.numbers[self._dl][self._dd] += data
        for _, eid in self._open:
            if eid:
                self.elements[eid]["text"] += data


def read_page(dom: str, panel_ids: list[str], num_columns: Mapping[str, int]) -> dict:
    """What the page shows: ``{"panels": {id: {"position", "value", "images", "numbers"}},
    "log": the page's #resource-log (``{"page", "resources", "images"}``) or None}``."""
    reader = _Reader()
    reader.feed(dom)
    el = reader.elements
    shown = {}
    for pid in panel_ids:
        cols = range(num_columns[pid])
        shown[pid] = {"position": int(el[f"panel-{pid}"]["attrs"]["data-position"]),
                      "value": el[f"value-{pid}"]["text"].strip(),
                      "images": [el[f"img-{pid}-{j}"]["attrs"]["src"] for j in cols],
                      "numbers": [reader.numbers[f"num-{pid}-{j}"] for j in cols]}
    log = el.get("resource-log", {}).get("text", "").strip()
    return {"panels": shown, "log": json.loads(log) if log else None}
