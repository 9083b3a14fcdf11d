"""Debian's Chromium driven by Playwright for Python (never Playwright's own browser
download), axe-core injected from ``web/node_modules`` (``scripts/web-assets``), and the
screenshots that docs/dashboard.md shows."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[2]
#: Debian's chromium package (``apt-get install chromium``); BEAMTWIN_CHROMIUM overrides.
CHROMIUM = Path(os.environ.get("BEAMTWIN_CHROMIUM", "/usr/bin/chromium"))
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
_SCRATCH = Path(tempfile.gettempdir()) / "beamtwin-dashboard-screenshots"
SCREENSHOTS = ROOT / "docs" / "dashboard"
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 768, "height": 1024}


def why_no_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        return f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium)"
    return None


@contextmanager
def chromium() -> Iterator[Browser]:
    reason = why_no_browser()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if CHROMIUM.exists() else Path(shutil.which("chromium") or "")
    with sync_playwright() as p:
        # --no-sandbox: the tests may run as root (in a container), where the sandbox refuses.
        browser = p.chromium.launch(
            executable_path=str(executable), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Page, base_url: str, token: str, path: str = "/ui/instruments") -> None:
    page.goto(f"{base_url}{path}")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}{path}*")


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """The serious and critical violations axe-core finds on the page (WCAG 2 A/AA rules)."""
    if not AXE.exists():
        pytest.skip(f"axe-core is not installed at {AXE}: run ./scripts/web-assets (npm)")
    # Evaluated through the DevTools protocol: the page's CSP (no inline script) stays on.
    page.evaluate(AXE.read_text(encoding="utf-8") + "\n;true")
    result = page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
    )
    assert result["passes"], "axe-core checked nothing"
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def screenshot(page: Page, name: str) -> Path:
    """A PNG of the viewport (kept small: the viewport, not the page): into docs/dashboard/
    when ``BEAMTWIN_UPDATE_SCREENSHOTS=1`` (to refresh docs/dashboard.md's pictures), else
    into a scratch folder, so that a test run leaves the checkout as it was."""
    folder = SCREENSHOTS if os.environ.get("BEAMTWIN_UPDATE_SCREENSHOTS") == "1" else _SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def dump(value: object) -> str:
    return json.dumps(value, indent=1, default=str)
