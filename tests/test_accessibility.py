"""WCAG 2.2 AA on the three pages in both themes, checked by axe-core (from npm, tests/npm) in a real Chromium: no
serious or critical violation; and the keyboard paths axe cannot judge (skip link, tabs on arrow keys)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.browser import ARTIFACTS, Pages, ServerFactory, editor_ready

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "npm" / "node_modules" / "axe-core" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


async def violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical WCAG A/AA violations on the page as it is now. The script is evaluated
    through the DevTools protocol, which the pages' CSP does not govern: the pages themselves load nothing new."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: make install-test (npm ci --prefix tests/npm)")
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.evaluate(AXE.read_text(encoding="utf-8"))
    found: list[dict[str, Any]] = await page.evaluate(
        """async (tags) => {
            const result = await axe.run(document, {runOnly: {type: "tag", values: tags}});
            return result.violations
              .filter((v) => v.impact === "serious" || v.impact === "critical")
              .map((v) => ({id: v.id, impact: v.impact, help: v.help,
                            nodes: v.nodes.slice(0, 5).map((n) => [n.target.join(" "), n.failureSummary])}));
        }""",
        TAGS,
    )
    return found


@pytest.mark.parametrize("theme", ["dark", "light"])
async def test_pages_have_no_serious_violations(serve: ServerFactory, pages: Pages, theme: str) -> None:
    server = await serve()
    found: dict[str, list[dict[str, Any]]] = {}
    for path in ("/", "/dashboard", "/docs"):
        page = await pages.open(server, path, wait_socket=path != "/docs")
        await page.evaluate("(theme) => localStorage.setItem('conveyor.theme', theme)", theme)
        await page.reload()
        await expect(page.locator("html")).to_have_attribute("data-theme", theme)
        if path == "/":
            await editor_ready(page)
            await page.click("#run")  # a finished run: output, figures and the share link on screen
            await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
        elif path == "/dashboard":
            await expect(page.locator("#jobs-body tr")).to_have_count(1)
        else:
            await expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
        found[path] = await violations(page)
        if path == "/":  # the other tabs of the input pane, a test row in place
            await page.click("#tab-tests")
            await page.click("#add-test")
            found["/ tests"] = await violations(page)
            await page.click("#tab-options")
            found["/ options"] = await violations(page)
    # The whole report for a human (tests/artifacts/ is git-ignored).
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"axe-{theme}.json").write_text(json.dumps(found, indent=1))
    assert all(v == [] for v in found.values()) and len(found) == 5, (theme, found)


async def test_a_skip_link_and_headings_on_every_page(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    for path in ("/", "/dashboard", "/docs"):
        page = await pages.open(server, path, wait_socket=path != "/docs")
        await page.keyboard.press("Tab")
        skip = page.locator("a.skip-link")
        await expect(skip).to_be_focused()
        await expect(skip).to_be_visible()  # shown when focused
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("main")).to_have_count(1)
        await expect(page.locator("#main")).to_be_focused()
        await expect(page.locator("h1")).to_have_count(1)


async def test_tabs_follow_the_arrow_keys(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await page.focus("#tab-stdin")
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#tab-tests")).to_be_focused()
    await expect(page.locator("#tab-tests")).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#tab-stdin")).to_have_attribute("tabindex", "-1")  # one tab stop for the list
    await page.keyboard.press("End")
    await expect(page.locator("#tab-options")).to_be_focused()
    await expect(page.locator("#opt-args")).to_be_visible()
    await page.keyboard.press("ArrowRight")  # wraps
    await expect(page.locator("#tab-stdin")).to_be_focused()
    await expect(page.locator("#stdin")).to_be_visible()
    dashboard = await pages.open(server, "/dashboard")
    await dashboard.focus(".tab[data-status=all]")
    await dashboard.keyboard.press("End")
    await expect(dashboard.locator(".tab[data-status=cancelled]")).to_be_focused()
    await expect(dashboard.locator(".tab[data-status=cancelled]")).to_have_attribute("aria-selected", "true")
    await dashboard.keyboard.press("ArrowLeft")
    await expect(dashboard.locator(".tab[data-status=timeout]")).to_have_attribute("aria-selected", "true")
