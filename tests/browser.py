"""Headless Chromium driven by Playwright, for tests that read what the MLflow UI renders.

The browser is Debian's ``chromium`` package (``make setup`` installs it): Playwright's own browser download
needs a host this project's machines may not reach. What the MLflow 3.17 UI does, as these helpers rely on:

* The experiment page opens on the tab of the sidebar's *GenAI / Model training* switch, which comes from
  ``?workflowType=`` in the URL, else the browser's localStorage, else GenAI: a fresh browser following a bare
  ``#/experiments/<id>`` link lands on the GenAI overview whatever the experiment's ``mlflow.experimentKind``
  tag says (mlflow/mlflow#24498). ``experiment_url`` therefore asks for ``workflowType=machine_learning``.
* The Models tab (``#/experiments/<id>/models``, "Agent versions" in GenAI mode) is an AG Grid table: one
  ``.ag-row`` per logged model with ``row-id`` = the model id, its cells carry ``col-id``: ``name``, ``status``,
  ``params.<key>`` and, per metric, ``metrics.{"metricKey": …, "datasetName": …, "datasetDigest": …}`` under
  a column group "Dataset: <name> (#<digest>)". Values are JavaScript's ``String(number)`` of the value.
"""

from __future__ import annotations

import contextlib
import html
import json
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# A laptop's screen; ``widen_to_table`` widens it to fit a table.
VIEWPORT = {"width": 1600, "height": 640}
TIMEOUT_MS = 60_000


@contextlib.contextmanager
def browser_page() -> Iterator["Page"]:  # noqa: F821 (playwright's Page, imported lazily)
    """A fresh page (empty localStorage) of a headless Chromium, closed when the block exits."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium package for the UI tests",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox needs user namespaces, which containers and root sessions lack.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield fresh_page(browser)
        finally:
            browser.close()


def fresh_page(browser) -> "Page":  # noqa: F821
    """A page of ``browser`` (``page.context.browser``) in a context of its own: empty localStorage, as a user
    following a link in a new browser."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def experiment_url(server_uri: str, experiment_id: str, tab: str = "", workflow: str = "machine_learning") -> str:
    """The UI's address of an experiment (``tab``: "runs", "models", … or "" for its default tab) in the given
    workflow ("machine_learning" or "genai"; "" leaves it to the browser, as a bare link does)."""
    url = f"{server_uri.rstrip('/')}/#/experiments/{experiment_id}" + (f"/{tab}" if tab else "")
    return url + (f"?workflowType={workflow}" if workflow else "")


def open_page(page, url: str, wait_for_text: str) -> str:
    """Go to ``url``, wait until ``wait_for_text`` is rendered, close the assistant panel; the page's text."""
    page.goto(url)
    page.get_by_text(wait_for_text).first.wait_for()
    close_assistant(page)
    return rendered_text(page)


def rendered_text(page) -> str:
    """What the page shows, as a user reads it (``innerText`` of the body)."""
    return page.inner_text("body")


def close_assistant(page) -> None:
    """Close the "MLflow Assistant" side panel that opens by default and covers a third of the page."""
    panel_close = page.get_by_role("button", name="Close", exact=True)
    if panel_close.count():
        panel_close.first.click()
        page.get_by_text("Ask questions about your experiments").wait_for(state="hidden")


def widen_to_table(page) -> None:
    """Widen the viewport until the AG Grid table on the page scrolls no more sideways: every column rendered
    (AG Grid leaves out those beyond its viewport) and in a screenshot."""
    hidden = page.evaluate("() => { const v = document.querySelector('.ag-center-cols-viewport');"
                           " return v ? v.scrollWidth - v.clientWidth : 0; }")
    if hidden > 0:
        page.set_viewport_size({"width": page.viewport_size["width"] + hidden + 16,
                                "height": page.viewport_size["height"]})
        page.wait_for_function("() => { const v = document.querySelector('.ag-center-cols-viewport');"
                               " return v.scrollWidth <= v.clientWidth; }")


def logged_model_cells(page) -> dict[str, dict[str, str]]:
    """The Models tab's table (widened first): {model id: {col-id: cell text}}; metric col-ids are decoded to
    ``metrics.<metricKey>@<datasetName>#<datasetDigest>`` (``@#`` when the metric has no dataset)."""
    widen_to_table(page)
    cells = page.locator(".ag-row .ag-cell").evaluate_all(
        "cells => cells.map(c => [c.closest('.ag-row').getAttribute('row-id'), c.getAttribute('col-id'),"
        " c.innerText])")
    table: dict[str, dict[str, str]] = {}
    for model_id, col_id, text in cells:
        table.setdefault(model_id, {})[_column(col_id)] = text.strip()
    return table


def _column(col_id: str) -> str:
    if not col_id.startswith("metrics.{"):
        return col_id
    key = json.loads(html.unescape(col_id.removeprefix("metrics.")))
    return f"metrics.{key['metricKey']}@{key.get('datasetName') or ''}#{key.get('datasetDigest') or ''}"


def metric_column(key: str, dataset_name: str | None, dataset_digest: str | None) -> str:
    """The ``logged_model_cells`` column of a logged model's metric."""
    return f"metrics.{key}@{dataset_name or ''}#{dataset_digest or ''}"


def as_shown(page, value: float) -> str:
    """``value`` as the UI prints a metric: JavaScript's ``String(number)`` (``1`` for 1.0, ``1e-7``…)."""
    return page.evaluate("v => String(v)", value)


def screenshot(page, path: Path) -> Path:
    """A PNG of the visible page at ``path`` (folders created), cut below the table's last row and right of its
    last metric column when there are such (the params columns after them would make it unreadably wide)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    bottom = page.evaluate("() => Math.max(0, ...[...document.querySelectorAll('.ag-row')]"
                           ".map(r => r.getBoundingClientRect().bottom))")
    right = page.evaluate("() => Math.max(0, ...[...document.querySelectorAll('.ag-header-cell[col-id^=\"metrics.\"]')]"
                          ".map(c => c.getBoundingClientRect().right))")
    height = min(size["height"], int(bottom) + 48) if bottom else size["height"]
    width = min(size["width"], int(right) + 24) if right else size["width"]
    page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": width, "height": height})
    return path
