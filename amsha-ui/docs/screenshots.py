"""The README's screenshots, made from the quickstart's runs: ``nox -s ui_screenshots``.

Copies ``examples/quickstart`` to a temporary folder, runs it as the README says (twice,
two topics), serves ``amsha ui`` over its store and takes, in Debian's Chromium, the runs
list and the second run's timeline with an LLM call's details open. Writes
``amsha-ui/docs/runs.png`` and ``amsha-ui/docs/run.png``.

    python amsha-ui/docs/screenshots.py [--out FOLDER]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    amsha = [sys.executable, "-m", "amsha"]
    with tempfile.TemporaryDirectory(prefix="amsha-screens-") as tmp:
        quickstart = Path(tmp) / "quickstart"
        shutil.copytree(ROOT / "examples" / "quickstart", quickstart, ignore=shutil.ignore_patterns(".amsha"))
        config = str(quickstart / "amsha.yaml")
        for topic in ("tide pools", "kelp forests"):
            subprocess.run(
                [*amsha, "run", config, "--input", f"topic={topic}", "--json"], check=True, stdout=subprocess.DEVNULL
            )
        server = subprocess.Popen([*amsha, "ui", "--config", config, "--port", "0"], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            url = line[line.index("http://") :].split()[0]
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=FLAGS, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 400}, device_scale_factor=1)
                page.goto(url)
                page.wait_for_selector("#runs tbody tr[data-run-id]")
                args.out.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out / "runs.png"), full_page=False)
                page.locator("#runs tbody tr[data-run-id] a.run-link").first.click()
                page.wait_for_selector("#waterfall .span-row")
                page.locator("#waterfall .span-row.k-llm").last.click()
                page.set_viewport_size({"width": 1280, "height": 900})
                page.evaluate("window.scrollTo(0, 0)")  # the click scrolled the row into view
                page.screenshot(path=str(args.out / "run.png"), full_page=False)
                browser.close()
        finally:
            server.terminate()
            server.wait(10)
    print(f"wrote {args.out / 'runs.png'} and {args.out / 'run.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
