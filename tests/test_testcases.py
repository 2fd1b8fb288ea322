"""The editor's test-cases panel in Chromium (static/testcases.js): tests added and removed, run as one judged job,
a verdict each as its `test` event arrives, kept across reloads, restored from a share link."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from tests.browser import Pages, ServerFactory, editor_ready, origin_of, screenshot, set_code

pytestmark = pytest.mark.browser

SUM = """import time
line = input()
if line == "sleep":
    time.sleep(60)
a, b = map(int, line.split())
print(a + b)
"""
TESTS = [("1 2", "3"), ("2 2", "5"), ("sleep", "0")]


async def add_tests(page: Page, tests: list[tuple[str, str]]) -> None:
    for stdin, expected in tests:
        await page.click("#add-test")
        row = page.locator("#tests .test").last
        await row.locator(".test-stdin").fill(stdin)
        await row.locator(".test-expected").fill(expected)


async def test_each_test_gets_a_verdict_as_it_finishes(serve: ServerFactory, pages: Pages) -> None:
    server = await serve(job_timeout_ms=3000)
    page = await pages.open(server, "/")
    await editor_ready(page)
    await set_code(page, SUM)
    await page.click("#tab-tests")
    await expect(page.locator("#stdin")).to_be_hidden()
    await expect(page.locator("#run-tests")).to_be_disabled()  # nothing to run yet
    await add_tests(page, [*TESTS, ("extra", "")])
    await page.locator("#tests .test").last.locator(".test-remove").click()
    await expect(page.locator("#tests .test-title")).to_have_text(["Test 1", "Test 2", "Test 3"])
    await expect(page.locator("#tests-count")).to_have_text("(3)")
    await page.click("#run-tests")
    verdicts = page.locator("#tests .verdict")
    # The first two verdicts are shown while the third test still runs (it sleeps until its time limit).
    await expect(verdicts.nth(1)).to_have_text("wrong answer")
    await expect(verdicts.nth(0)).to_have_text("accepted")
    await expect(verdicts.nth(2)).to_have_text("waiting…")
    await expect(page.locator("#status")).to_have_attribute("data-state", "running")
    await expect(verdicts).to_have_text(["accepted", "wrong answer", "time limit"])
    # The job completed, but two tests failed: the status says so, in red, not a green "completed".
    await expect(page.locator("#status")).to_have_text("2 of 3 tests failed: wrong answer ×1, time limit ×1")
    await expect(page.locator("#status")).to_have_attribute("data-state", "failed")
    await expect(page.locator("#tests-summary")).to_have_text("1 / 3 accepted")
    # Time and memory per test, and what a wrong answer printed.
    figures = page.locator("#tests .test-figures")
    await expect(figures.nth(0)).to_have_text(re.compile(r"^(<1 ms|[\d.]+ m?s) · [\d.]+ MiB$"))
    diff = page.locator("#tests .test-output").nth(1)
    await expect(diff).to_have_attribute("data-kind", "diff")
    await expect(diff.locator(".diff-del")).to_have_text("- 5\n", use_inner_text=True)
    await expect(diff.locator(".diff-add")).to_have_text("+ 4\n", use_inner_text=True)
    await expect(page.locator("#tests .test-output").nth(0)).to_be_hidden()
    await screenshot(page, "editor-tests", full_page=False)
    # The link names the judged job: opened again, its tests come back with their verdicts.
    assert "?job=" in page.url
    await page.reload()
    await expect(page.locator("#tab-tests")).to_have_attribute("aria-selected", "true")
    await expect(verdicts).to_have_text(["accepted", "wrong answer", "time limit"])
    assert await page.locator("#tests .test-stdin").evaluate_all("n => n.map(t => t.value)") == ["1 2", "2 2", "sleep"]


async def test_tests_are_kept_across_reloads_and_fit_a_phone(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(max_tests=2), "/", viewport={"width": 390, "height": 844})
    await editor_ready(page)
    await page.click("#tab-tests")
    await add_tests(page, TESTS[:2])
    await expect(page.locator("#add-test")).to_be_disabled()  # MAX_TESTS, as the server would refuse more
    await page.reload()
    await editor_ready(page)
    await page.click("#tab-tests")
    await expect(page.locator("#tests .test")).to_have_count(2)
    assert await page.locator("#tests .test-expected").evaluate_all("n => n.map(t => t.value)") == ["3", "5"]
    await expect(page.locator("#run-tests")).to_be_enabled()
    width, inner = await page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert width <= inner, (width, inner)


async def test_a_limit_per_test_ctrl_enter_runs_the_tests_and_fields_keep_their_labels(
    serve: ServerFactory, pages: Pages
) -> None:
    server = await serve(job_timeout_ms=20_000)
    page = await pages.open(server, "/")
    await editor_ready(page)
    await set_code(page, SUM)
    await page.click("#tab-tests")
    await add_tests(page, [("sleep", "0"), ("1 2", "3")])
    # Filled fields still say which is which.
    labels = page.locator("#tests .test").first.locator(".test-field-label")
    await expect(labels).to_have_text(["stdin", "expected output"])
    await expect(page.locator("#tests .test-stdin").first).to_have_accessible_name("stdin")
    await expect(page.locator("#test-timeout")).to_have_attribute("placeholder", "20000")
    await page.fill("#test-timeout", "700")
    await page.focus("#code")
    await page.keyboard.press("Control+Enter")  # on the Tests tab: the tests, not the plain program
    await expect(page.locator("#tests .verdict").first).to_have_text("waiting…")
    await expect(page.locator("#input")).to_be_disabled()  # a judged run takes no live input
    await expect(page.locator("#tests .verdict")).to_have_text(["time limit", "accepted"])
    await expect(page.locator("#status")).to_have_text("1 of 2 tests failed: time limit ×1")
    job = await (await page.request.get(f"{origin_of(server)}/queue/job/{page.url.rsplit('=', 1)[1]}")).json()
    assert job["timeoutMs"] == 700 and len(job["tests"]) == 2
    # Every test accepted: green, and said so.
    await page.locator("#tests .test").first.locator(".test-remove").click()
    await page.click("#run-tests")
    await expect(page.locator("#status")).to_have_text("all 1 test accepted")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")


async def test_a_line_diff_marks_only_the_lines_that_differ(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    diff = await page.evaluate("TestCases.lineDiff('a\\nb\\nc\\nd\\n', 'a  \\nB\\nc\\nd\\ne')")
    assert diff == [[" ", "a  "], ["-", "b"], ["+", "B"], [" ", "c"], [" ", "d"], ["+", "e"]]
