"""A real browser for the dashboard's pages: Debian's chromium driven by Playwright
(its own browser download cannot work here), each page watched for console errors,
failed requests and error answers, with a screenshot kept of every page opened. The
fixtures that launch it live in test_dashboard_browser.py, which alone uses them."""

from __future__ import annotations

from pathlib import Path

from playwright import sync_api

from tests.worker_helpers import ROOT

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
#: The browser's zone and locale: times on the pages must be shown in this zone.
ZONE, LOCALE = "Asia/Kolkata", "en-GB"


class Watched:
    """A page with everything that went wrong on it recorded."""

    def __init__(self, page: sync_api.Page) -> None:
        self.page = page
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        page.on(
            "console",
            lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on(
            "response",
            lambda r: self.problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
        )
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: sync_api.Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()

    def open(self, url: str, shot: str) -> sync_api.Response | None:
        response = self.page.goto(url, wait_until="networkidle")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"), full_page=True)
        return response

    def cells(self, table_id: str) -> list[list[str]]:
        return [
            [cell.strip() for cell in row]
            for row in self.page.eval_on_selector_all(
                f"#{table_id} tbody tr",
                "rows => rows.map(r => [...r.cells].map(c => c.textContent))",
            )
        ]
