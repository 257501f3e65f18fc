#!/usr/bin/env python3
"""Render a diffprune report.html in headless Chromium: a full-page PNG screenshot, the console errors,
uncaught exceptions, failed loads and broken images. Exit status 0 when there are none, 1 otherwise.

    python scripts/check_report.py runs/demo/report/report.html --png /tmp/report.png
    python scripts/check_report.py --demo --png /tmp/report.png   # build a CI-sized digits run first (~1-2 min)

Talks to Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on
file descriptors 3 and 4), so it needs only the standard library and a Chromium binary (Debian: ``apt-get
install chromium``; or pass --chromium PATH / set CHROMIUM).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# the demo run: the pipeline e2e test's CI-sized settings (tests/test_pipeline_e2e.py TINY)
DEMO = [
    "data.limit=120", "data.resolution=8", "embed.batch_size=60", "select.ratio=0.5",
    "reweight.steps=6", "reweight.batch_size=20", "reweight.reference_steps=6",
    "train.preset=ddpm-tiny", "train.steps=6", "train.batch_size=16",
    "sample.num_samples=12", "sample.steps=3", "sample.batch_size=12",
    "evaluate.num_real=24", "evaluate.kid_subset_size=10", "evaluate.kid_subsets=5", "evaluate.prdc_k=3",
    "evaluate.classwise=false", "evaluate.cross_check=false",
]
# every <img>: decoded (naturalWidth > 0) and laid out at a non-zero size, or not; its alt text names it
IMAGES_JS = ("JSON.stringify([...document.images].map(i => ({alt: i.alt, src: i.src.slice(0, 80), "
             "ok: i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0 "
             "&& i.getBoundingClientRect().height > 0, w: i.naturalWidth, h: i.naturalHeight, "
             "shown: [i.getBoundingClientRect().width, i.getBoundingClientRect().height]})))")
# every rendered table: its caption or first header cell, its rows, and whether it is laid out with a size
TABLES_JS = ("JSON.stringify([...document.querySelectorAll('table')].map(t => ({name: (t.caption ? "
             "t.caption.textContent : t.rows[0].cells[0].textContent).trim().slice(0, 60), rows: t.rows.length, "
             "visible: t.getBoundingClientRect().height > 0})))")
# elements sticking out of the page's right edge (a wide table not wrapped in a scrolling box), and the page's width
OVERFLOW_JS = ("JSON.stringify({page: document.documentElement.scrollWidth, view: document.documentElement.clientWidth, "
               "wide: [...document.querySelectorAll('body > *')].filter(e => e.getBoundingClientRect().right > "
               "document.documentElement.clientWidth + 1).map(e => e.tagName.toLowerCase() + ': ' + "
               "e.textContent.trim().slice(0, 60))})")


class DevTools:
    """A Chromium child process driven over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, width: int):
        import fcntl

        to_browser_r, self.to_browser_w = os.pipe()
        self.from_browser_r, from_browser_w = os.pipe()
        # the child's ends, moved above fd 9 so that putting them on 3 and 4 cannot overwrite one another
        self.child_fds = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)
        log = open(os.environ.get("CHECK_REPORT_LOG", os.devnull), "w")  # Chromium's own stderr
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", f"--window-size={width},900",
             f"--user-data-dir={tempfile.mkdtemp(prefix='check-report-')}", "about:blank"],
            close_fds=False, preexec_fn=self._map_fds, stdout=subprocess.DEVNULL, stderr=log)
        for fd in self.child_fds:
            os.close(fd)
        self.out = os.fdopen(self.to_browser_w, "wb", buffering=0)
        self.inp = os.fdopen(self.from_browser_r, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _map_fds(self) -> None:  # in the child: fd 3 reads our commands, fd 4 carries the replies
        os.dup2(self.child_fds[0], 3)
        os.dup2(self.child_fds[1], 4)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = self.inp.read(1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self.proc.poll()})")
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, timeout: float = 30.0, **params) -> dict:
        """Send one command (to the page session once attached) and return its result; events seen while
        waiting go to ``self.events``."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        self.out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def find_chromium(given: str | None) -> str:
    for name in ([given] if given else []) + [os.environ.get("CHROMIUM", "")] + list(BROWSERS):
        path = name and shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found: apt-get install chromium, or pass --chromium PATH")


def check(html: Path, png: Path | None, binary: str, width: int = 1100) -> dict:
    """Load ``html`` at ``width`` CSS pixels and return {"console_errors", "exceptions", "failed_loads", "images",
    "broken_images" (not decoded, or laid out at zero size), "image_sizes", "tables", "overflowing", "page_size"};
    write the full-page screenshot to ``png``."""
    b = DevTools(binary, width)
    try:
        target = next(t for t in b.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        b.session = b.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.send(f"{domain}.enable")
        b.send("Page.navigate", url=html.resolve().as_uri())
        b.wait_for("Page.loadEventFired")
        images = json.loads(b.send("Runtime.evaluate", expression=IMAGES_JS, returnByValue=True)["result"]["value"])
        overflow = json.loads(b.send("Runtime.evaluate", expression=OVERFLOW_JS, returnByValue=True)["result"]["value"])
        tables = json.loads(b.send("Runtime.evaluate", expression=TABLES_JS, returnByValue=True)["result"]["value"])
        size = b.send("Page.getLayoutMetrics")["cssContentSize"]
        if png is not None:
            shot = b.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1})
            png.write_bytes(base64.b64decode(shot["data"]))
        events = b.events
    finally:
        b.close()
    ev = [(e.get("method"), e.get("params", {})) for e in events]
    return {
        "console_errors": [" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                           for m, p in ev if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert")]
                          + [p["entry"]["text"] for m, p in ev if m == "Log.entryAdded" and p["entry"]["level"] == "error"],
        "exceptions": [p["exceptionDetails"].get("text", "") for m, p in ev if m == "Runtime.exceptionThrown"],
        "failed_loads": [p.get("errorText", "") for m, p in ev if m == "Network.loadingFailed"],
        "images": len(images),
        "broken_images": [i for i in images if not i["ok"]],
        "image_sizes": [i["shown"] for i in images],  # CSS pixels as laid out
        "tables": tables,
        "overflowing": overflow["wide"],  # wider than the viewport: cut off in the screenshot, scrolls the page
        "page_size": [overflow["page"], round(size["height"])],
    }


def build_demo(workdir: Path) -> Path:
    """Run the CI-sized digits demo (configs/demo.yaml) under ``workdir`` and return its report.html."""
    args = [sys.executable, "-m", "diffprune.cli", "run", "configs/demo.yaml", "--no-progress",
            "--set", f"runs_dir={workdir}"]
    for item in DEMO:
        args += ["--set", item]
    subprocess.run(args, check=True, cwd=Path(__file__).resolve().parent.parent)
    return workdir / "demo" / "report" / "report.html"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", nargs="?", type=Path, help="report.html to check")
    ap.add_argument("--demo", action="store_true", help="build a CI-sized demo run first and check its report")
    ap.add_argument("--png", type=Path, help="where to write the full-page screenshot")
    ap.add_argument("--chromium", help="browser binary (default: chromium, google-chrome, ... on PATH)")
    ap.add_argument("--width", type=int, default=1100, help="viewport width in CSS pixels")
    a = ap.parse_args()
    if a.demo == (a.html is not None):
        ap.error("give a report.html or --demo")
    html = build_demo(Path(tempfile.mkdtemp(prefix="diffprune-demo-"))) if a.demo else a.html
    if not html.is_file():
        sys.exit(f"no such file: {html}")
    result = check(html, a.png, find_chromium(a.chromium), a.width)
    print(json.dumps({"report": str(html), "screenshot": str(a.png) if a.png else None, **result}, indent=2))
    bad = any(result[k] for k in ("console_errors", "exceptions", "failed_loads", "broken_images", "overflowing"))
    sys.exit(1 if bad or not result["images"] else 0)


if __name__ == "__main__":
    main()
