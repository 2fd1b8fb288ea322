"""The dashboard's charts in Chromium: full from the server's history when the page opens, three ranges, and a
throughput card that follows the load."""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import expect

from server.doors.history import HISTORY, sample_from
from server.keys import QUEUE
from tests.browser import Pages, ServerFactory, screenshot, submit

pytestmark = pytest.mark.browser


async def test_charts_are_full_when_the_page_opens_and_switch_ranges(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    store = server.app[HISTORY].store
    await store.close()  # only the samples below
    # Ten minutes of history from before the page existed: a load that rose and fell.
    now_ms = int(time.time() * 1000) // 5000 * 5000
    processed = 0
    for i in range(120):
        t = now_ms - (120 - i) * 5000
        load = 60 - abs(60 - i)
        processed += load  # up to 12 jobs/s at the peak
        stats = {
            "totalProcessed": processed,
            "queueLength": load // 4,
            "runningCount": min(5, load),
            "waitTime": {"p50": load * 2.0, "p95": load * 9.0},
            "executionTime": {"p50": 25.0 + load, "p95": 80.0 + 3 * load},
        }
        await store.append(sample_from(stats, t))
    for code in ("print('hello')", "import sys; sys.exit(2)"):
        await submit(server, code, wait=True)
    await submit(server, "echo hi", "bash", wait=True)
    page = await pages.open(server, "/dashboard")
    for chart in ("throughput", "queue", "wait", "exec"):
        await expect(page.locator(f"#chart-{chart}")).to_have_attribute("data-points", re.compile(r"^1[2-9]\d$"))
        await expect(page.locator(f"#chart-{chart} canvas")).to_have_count(1)
    await expect(page.locator(".range[aria-pressed=true]")).to_have_text("15 min")
    await screenshot(page, "dashboard", full_page=False)

    async with page.expect_request(re.compile(r"/queue/history\?range=1h$")):
        await page.click(".range[data-range='1h']")
    await expect(page.locator(".charts")).to_have_attribute("data-range", "1h")
    await expect(page.locator(".range[aria-pressed=true]")).to_have_text("1 h")
    async with page.expect_request(re.compile(r"/queue/history\?range=24h$")):
        await page.click(".range[data-range='24h']")
    await expect(page.locator(".charts")).to_have_attribute("data-range", "24h")
    await page.reload()  # the range is remembered
    await expect(page.locator(".charts")).to_have_attribute("data-range", "24h")


async def test_throughput_card_follows_the_load(serve: ServerFactory, pages: Pages) -> None:
    server = await serve(max_concurrent_jobs=2)
    page = await pages.open(server, "/dashboard")
    await expect(page.locator("#stat-rate")).to_have_text("0")
    sampler = server.app[HISTORY]
    await sampler.store.close()
    # A sample of the idle queue, as the sampler takes every 5 s; then a burst of jobs.
    await sampler.store.append(sample_from(await server.app[QUEUE].stats(), int(time.time() * 1000) - 5000))
    jobs = [await submit(server, "true", "bash") for _ in range(8)]
    for job in jobs:
        assert job["httpStatus"] == 202
    await expect(page.locator("#stat-completed")).to_have_text("8")
    await page.click(".range[data-range='15m']")  # fetch the history now rather than at the next refresh
    # The card is the processed count over the time since that sample (a few seconds): the server's own
    # jobsPerSecond divides by a whole minute, 8/60 = 0.13 here, which is what the card used to show under load.
    status = await (await page.context.request.get(str(server.make_url("/queue/status")))).json()
    rate = float(await page.locator("#stat-rate").text_content() or "0")
    assert rate > status["jobsPerSecond"] > 0
