"""The dashboard's job list, admin actions, instances and warm-pool card in Chromium, against real servers (the
job list's paging, sorting and counting rules are checked on the API in tests/test_listing.py)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import Locator, Page, Route, expect

from server.keys import SETTINGS
from tests.browser import LONG_JOB_MS, Pages, ServerFactory, handle, row, screenshot, submit
from tests.conftest import keys_file

pytestmark = pytest.mark.browser
ADMIN_KEY = "cvy_dashboard-list-admin-key"


async def sign_in(page: Page) -> None:
    await page.fill("#api-key", ADMIN_KEY)
    await page.click("#auth-submit")
    await expect(page.locator("#admin-badge")).to_have_text("admin")


async def test_job_list_pages_sorts_and_counts_by_status(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    jobs = [await submit(server, "true" if i % 4 else "exit 3", "bash", wait=True) for i in range(12)]
    page = await pages.open(server, "/dashboard")

    def tab(status: str) -> Locator:
        return page.locator(f".tab[data-status={status}] .tab-count")

    await expect(tab("all")).to_have_text("12")
    await expect(tab("completed")).to_have_text("9")
    await expect(tab("failed")).to_have_text("3")
    await expect(tab("queued")).to_have_text("0")
    await expect(page.locator("#jobs-body tr")).to_have_count(12)

    await page.select_option("#page-size", "10")
    await expect(page.locator("#jobs-body tr")).to_have_count(10)
    await expect(page.locator("#page-info")).to_have_text("page 1 of 2 · 12 jobs")
    # Newest first: the last job submitted heads page 1, the first two are on page 2.
    await expect(page.locator("#jobs-body tr").first).to_have_attribute("data-handle", handle(server, jobs[-1]["id"]))
    await page.click("#page-next")
    await expect(page.locator("#page-info")).to_have_text("page 2 of 2 · 12 jobs")
    await expect(page.locator("#jobs-body tr")).to_have_count(2)
    await expect(page.locator("#page-next")).to_be_disabled()
    await expect(page.locator("#jobs-body tr").last).to_have_attribute("data-handle", handle(server, jobs[0]["id"]))

    # Sorting starts again at page 1: oldest first.
    created = page.locator("#jobs th[data-sort=createdAt]")
    await created.locator("button").click()
    await expect(created).to_have_attribute("aria-sort", "ascending")
    await expect(page.locator("#page-info")).to_have_text("page 1 of 2 · 12 jobs")
    await expect(page.locator("#jobs-body tr").first).to_have_attribute("data-handle", handle(server, jobs[0]["id"]))

    await page.click(".tab[data-status=failed]")
    await expect(page.locator(".tab[data-status=failed]")).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#jobs-body tr")).to_have_count(3)
    await expect(page.locator("#jobs-body .badge")).to_have_text(["failed"] * 3)
    # Live: a new job counts at once on its tab and in all.
    await submit(server, "exit 4", "bash", wait=True)
    await expect(tab("failed")).to_have_text("4")
    await expect(tab("all")).to_have_text("13")
    await expect(page.locator("#jobs-body tr")).to_have_count(4)
    # The embedded queue: one instance, this one.
    await expect(page.locator("#instances-mode")).to_have_text("embedded")
    await expect(page.locator("#instances-list .instance[data-here]")).to_have_count(1)
    await screenshot(page, "dashboard-list")


async def test_admin_runs_again_and_cancels_in_bulk(serve: ServerFactory, pages: Pages, tmp_path: Path) -> None:
    keys = keys_file(tmp_path, {"ops": (ADMIN_KEY, True)})
    server = await serve(api_keys_file=keys, max_concurrent_jobs=1, job_timeout_ms=LONG_JOB_MS)
    done = await submit(server, "print('again', input())  # CODE-4d1e", wait=True, stdin="IN-7a2b")
    viewer = await pages.open(server, "/dashboard")
    admin = await pages.open(server, "/dashboard")
    await sign_in(admin)

    await row(admin, server, done["id"]).locator("[data-action=rerun]").click()
    await expect(admin.locator("#toast")).to_contain_text("Queued again as")
    # The new job opens in the detail panel, the same code and input, its own output once it ran.
    full = admin.locator("#detail-full")
    await expect(full.locator('[data-stream="stdout"] pre')).to_have_text("again IN-7a2b\n")
    await expect(full.locator('[data-stream="code"] pre')).to_have_text("print('again', input())  # CODE-4d1e")
    new_id = admin.url.rsplit("#job=", 1)[1]
    assert new_id != done["id"]
    await expect(row(admin, server, new_id).locator(".badge")).to_have_text("completed")

    sleeper = await submit(server, "import time\ntime.sleep(60)")
    waiting = [await submit(server, "print('never')") for _ in range(2)]
    for job in (sleeper, *waiting):
        await expect(row(admin, server, job["jobId"]).locator(".badge")).not_to_have_text("completed")
        await row(admin, server, job["jobId"]).locator("[data-role=select]").check()
    await row(admin, server, done["id"]).locator("[data-role=select]").check()
    await expect(admin.locator("#bulk-count")).to_have_text("4 selected")
    await screenshot(admin, "dashboard-bulk")
    await admin.click("#bulk-cancel")
    await expect(admin.locator("#bulk-question")).to_have_text("Cancel or stop 4 jobs?")
    await admin.click("#bulk-yes")
    await expect(admin.locator("#toast")).to_have_text("3 cancelled; 1 not (already completed).")
    for page in (viewer, admin):
        for job in (sleeper, *waiting):
            await expect(row(page, server, job["jobId"]).locator(".badge")).to_have_text("cancelled")
    await expect(admin.locator("#bulk")).to_be_hidden()

    # The viewer has none of it, and its browser (with its owner cookie) is refused when it tries anyway.
    await expect(viewer.locator("#jobs-body input, #jobs-body button, #bulk-cancel:visible")).to_have_count(0)
    attempts = await viewer.evaluate(
        """async (id) => {
            const post = (path, body) => fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                                      body: JSON.stringify(body)});
            const answers = [await post(`/queue/job/${id}/rerun`, {}), await post("/queue/jobs/cancel", {ids: [id]})];
            return Promise.all(answers.map(async (r) => [r.status, (await r.json()).error]));
        }""",
        done["id"],
    )
    assert attempts == [[403, "Forbidden"], [403, "Forbidden"]]


async def test_a_sign_in_survives_a_reload_and_the_page_never_holds_the_key(
    serve: ServerFactory, pages: Pages, tmp_path: Path
) -> None:
    server = await serve(api_keys_file=keys_file(tmp_path, {"ops": (ADMIN_KEY, True)}))
    done = await submit(server, "print('kept')  # CODE-5b0c", wait=True)
    admin = await pages.open(server, "/dashboard")
    await sign_in(admin)
    await admin.reload()
    # Still the admin after the reload: the socket's upgrade carried the cookie, and REST uses it too.
    await expect(admin.locator("#admin-badge")).to_have_text("admin")
    await expect(admin.locator("#auth-message")).to_contain_text("Signed in as ops")
    await row(admin, server, done["id"]).click()
    await expect(admin.locator('#detail-full [data-stream="code"] pre')).to_have_text("print('kept')  # CODE-5b0c")
    await expect(admin.locator("#detail-list")).to_contain_text("Submitted by")
    # Nothing a page script can read holds the key or the session.
    held = await admin.evaluate(
        "() => [document.cookie, JSON.stringify(localStorage), JSON.stringify(sessionStorage)].join(' ')"
    )
    assert "conveyor_session" not in held and ADMIN_KEY not in held
    await admin.click("#sign-out")
    await expect(admin.locator("#admin-badge")).to_have_text("read-only")
    await admin.reload()
    await expect(admin.locator("#admin-badge")).to_have_text("read-only")
    await expect(admin.locator("#sign-out")).to_be_hidden()


async def test_instances_in_redis_mode(serve: ServerFactory, pages: Pages, redis_url: str) -> None:
    first = await serve(redis_url=redis_url, worker_slots=1, job_timeout_ms=LONG_JOB_MS)
    await serve(redis_url=redis_url, worker_slots=2)
    page = await pages.open(first, "/dashboard")
    instances = page.locator("#instances-list .instance")
    await expect(page.locator("#instances-mode")).to_have_text("Redis · 2 live")
    await expect(instances).to_have_count(2)
    await expect(page.locator("#instances-list .instance", has_text="this one")).to_have_count(1)
    here = page.locator("#instances-list .instance[data-here]")
    await expect(here.locator("[data-role=load]")).to_contain_text("0 / 1 slots busy")
    await expect(here.locator("[data-role=beat]")).to_have_text(re.compile(r"^[\d.]+ m?s ago$"))
    sleeper = await submit(first, "import time\ntime.sleep(60)")
    # Whichever instance claimed it shows it, by handle.
    await expect(page.locator("#instances-list .instance-jobs")).to_have_text(handle(first, sleeper["jobId"]))
    await screenshot(page, "dashboard-instances", full_page=False)
    # A closing instance taking its record with it, and records expiring: tests/test_listing.py.


async def test_pool_card_only_when_health_has_a_pool(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/dashboard")
    await expect(page.locator("#stat-cache")).to_have_text("off")  # the cards have loaded
    await expect(page.locator("#card-pool")).to_be_visible()  # this server's own pool (WARM_POOL's default)
    await expect(page.locator("#stat-pool")).to_have_text(re.compile(r"^\d+ ready$"))

    # Fixed figures, through this server's own /health with `pool` replaced; then without it (an older server).
    pool = {
        "enabled": True,
        "ready": 3,
        "inUse": 1,
        "hits": 41,
        "misses": 2,
        "refillMs": 38.5,
        "languages": {"python": {"ready": 2, "target": 2}, "c": {"ready": 1, "target": 2}},
    }
    await page.route("**/health", health_with(pool))
    await page.reload()
    await expect(page.locator("#card-pool")).to_be_visible()
    await expect(page.locator("#stat-pool")).to_have_text("3 ready")
    await expect(page.locator("#stat-pool-sub")).to_have_text("1 in use · 41 hits · 2 misses · refill 39 ms")
    await expect(page.locator("#stat-pool-languages")).to_have_text("python 2/2 · c 1/2")
    await screenshot(page, "dashboard-pool", full_page=False)
    await page.unroute("**/health")
    off: dict[str, Any] = {
        "enabled": False,
        "ready": 0,
        "inUse": 0,
        "hits": 0,
        "misses": 0,
        "refillMs": None,
        "languages": {},
    }
    await page.route("**/health", health_with(off))
    await page.reload()
    await expect(page.locator("#stat-pool")).to_have_text("off")
    await page.unroute("**/health")
    await page.route("**/health", health_with(None))
    await page.reload()
    await expect(page.locator("#stat-cache")).to_have_text("off")
    await expect(page.locator("#card-pool")).to_be_hidden()


def health_with(pool: dict[str, Any] | None) -> Callable[[Route], Awaitable[None]]:
    """A route handler: the server's real /health answer, with `pool` replaced (None: left out)."""

    async def handler(route: Route) -> None:
        response = await route.fetch()
        body: dict[str, Any] = orjson.loads(await response.body())
        body.pop("pool", None)
        await route.fulfill(response=response, json=body if pool is None else {**body, "pool": pool})

    return handler


async def test_a_whole_page_is_cancelled_past_the_batch_limit_after_a_confirmation(
    serve: ServerFactory, pages: Pages, tmp_path: Path
) -> None:
    keys = keys_file(tmp_path, {"ops": (ADMIN_KEY, True)})
    server = await serve(api_keys_file=keys, max_concurrent_jobs=1, max_queue_size=30, job_timeout_ms=LONG_JOB_MS)
    limit = server.app[SETTINGS].max_batch_size
    jobs = [await submit(server, "import time\ntime.sleep(60)") for _ in range(25)]  # one runs, 24 wait
    admin = await pages.open(server, "/dashboard")
    await sign_in(admin)
    await expect(admin.locator("#page-size")).to_have_value("25")
    await expect(admin.locator("#jobs-body tr")).to_have_count(25)
    await admin.check("#select-page")
    await expect(admin.locator("#bulk-count")).to_have_text("25 selected")
    assert 25 > limit  # more than one request may carry
    await admin.click("#bulk-cancel")
    await expect(admin.locator("#bulk-question")).to_have_text("Cancel or stop 25 jobs?")
    await expect(admin.locator("#bulk-no")).to_be_focused()
    await admin.click("#bulk-no")  # nothing happens without a yes
    await expect(admin.locator("#bulk-confirm")).to_be_hidden()
    await expect(admin.locator("#jobs-body .badge", has_text="cancelled")).to_have_count(0)
    await admin.click("#bulk-cancel")
    await admin.click("#bulk-yes")
    await expect(admin.locator("#toast")).to_have_text("25 cancelled.")
    for job in jobs:
        await expect(row(admin, server, job["jobId"]).locator(".badge")).to_have_text("cancelled")
