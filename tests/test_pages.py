"""The editor and the dashboard in a real headless Chromium against a real listening server and the real sandbox."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from server.access.identity import new_owner_token
from server.hub.hub import HUB
from server.queue.jobs import Runner
from tests.browser import (
    LONG_JOB_MS,
    Pages,
    ServerFactory,
    editor_ready,
    expect_code,
    handle,
    origin_of,
    row,
    screenshot,
    set_code,
    stop_as_owner,
    stop_server,
    submit,
)

pytestmark = pytest.mark.browser
ADMIN_KEY = "cvy_dashboard-admin-key"
SLEEP = "import time\ntime.sleep(60)"


async def test_editor_runs_python_hello_with_keyboard(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await expect(page.locator("#language option")).to_contain_text(["Python"])
    await set_code(page, "for i in range(2):\n")
    await page.focus("#code")
    await page.keyboard.press("Control+End")
    await page.keyboard.press("Tab")  # indents instead of moving focus
    await page.keyboard.type("print('hello', i)")
    await expect(page.locator("#code")).to_be_focused()
    await expect_code(page, "for i in range(2):\n    print('hello', i)")
    await page.keyboard.press("Control+Enter")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    # A pre-started python runs a hello in under a millisecond: "<1 ms" is a run time too.
    status = re.compile(r"^completed, exit 0, (<1 ms|[\d.]+ m?s), CPU (<1|[\d.]+) m?s, [\d.]+ MiB peak$")
    await expect(page.locator("#status")).to_have_text(status)
    await expect(page.locator("#output .out-stdout")).to_have_text("hello 0\nhello 1\n", use_inner_text=True)
    await screenshot(page, "editor")


async def test_editor_escapes_output_and_marks_stderr(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await set_code(page, "import sys\nprint('<img src=x onerror=alert(1)><b>bold</b>')\nprint('oops', file=sys.stderr)")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(page.locator("#output .out-stderr")).to_have_text("oops\n", use_inner_text=True)
    await expect(page.locator("#output .out-stdout")).to_contain_text("<img src=x onerror=alert(1)><b>bold</b>")
    await expect(page.locator("#output img, #output b")).to_have_count(0)


async def test_editor_shows_compile_errors(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await page.select_option("#language", "c")
    await expect_code(page, re.compile("printf"))  # the C starter replaced Python's
    await set_code(page, "int main(void) { return missing_name; }\n")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_text(re.compile(r"^failed: compile_error"))
    await expect(page.locator("#output .compile-block")).to_contain_text("missing_name")


async def test_editor_sends_typed_input_and_eof(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    code = (
        "import sys\nname = input()\nprint('hi ' + name, flush=True)\n"
        "rest = sys.stdin.read()\nprint('rest', len(rest.splitlines()))"
    )
    await set_code(page, code)
    await page.check("#live")  # stdin stays open for typed lines
    await page.click("#run")
    await expect(page.locator("#status")).to_have_text(re.compile(r"^running \d+\.\d s$"))
    await expect(page.locator("#input")).to_be_enabled()
    await page.fill("#input", "bob")
    await page.press("#input", "Enter")
    await expect(page.locator("#output")).to_contain_text("hi bob")
    for line in ("x", "y"):
        await page.fill("#input", line)
        await page.press("#input", "Enter")
    await page.press("#input", "Control+d")  # end of input
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(page.locator("#output")).to_contain_text("rest 2")
    await expect(page.locator("#input")).to_be_disabled()
    await screenshot(page, "editor-input")


async def test_editor_stop_ends_an_infinite_loop(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(job_timeout_ms=LONG_JOB_MS), "/")
    await editor_ready(page)
    code = (
        "import itertools\nfor i in itertools.count():\n    if i % 500000 == 0:\n        print('tick', i, flush=True)"
    )
    await set_code(page, code)
    await page.click("#run")
    await expect(page.locator("#output")).to_contain_text("tick 0")
    await expect(page.locator("#stop")).to_be_enabled()
    await page.click("#stop")
    await expect(page.locator("#status")).to_have_text("cancelled")
    await expect(page.locator("#stop")).to_be_disabled()
    await expect(page.locator("#run")).to_be_enabled()


async def test_editor_shows_its_place_in_line(serve: ServerFactory, pages: Pages) -> None:
    server = await serve(max_concurrent_jobs=1, job_timeout_ms=LONG_JOB_MS)
    page = await pages.open(server, "/")
    await editor_ready(page)
    sleeper = await submit(server, SLEEP)
    ahead = await submit(server, SLEEP)
    await set_code(page, "print('my turn')")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_text("queued (#2 in line)")
    async with aiohttp.ClientSession() as session:
        async with session.delete(server.make_url(f"/queue/job/{ahead['jobId']}")) as resp:
            assert resp.status == 200
    await expect(page.locator("#status")).to_have_text("queued (#1 in line)")
    await stop_as_owner(server, sleeper["jobId"])
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(page.locator("#output")).to_have_text("my turn")


async def test_editor_resumes_after_its_socket_drops(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    code = "import time\nfor i in range(200):\n    print('line', i, flush=True)\n    time.sleep(0.01)\n"
    await set_code(page, code)
    await page.click("#run")
    await expect(page.locator("#output")).to_contain_text("line 5")
    # What the hub does to a client that stops reading: close with 1013 ("reconnect and resume with since").
    for conn in list(server.app[HUB].connections):
        await conn.close(1013, "test")
    await expect(page.locator("#output")).to_contain_text("(reconnected)")
    # The reconnected editor takes its interactive job back (the hub stops it only when nobody returns), and the
    # replay after `since` neither lost nor repeated a line.
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    text = await page.locator("#output .out-stdout").all_inner_texts()
    numbers = [int(line.split()[1]) for line in "".join(text).splitlines()]
    assert numbers == list(range(200))


async def test_a_reloaded_editor_takes_back_its_running_job(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await set_code(page, "print('hello', input(), flush=True)")
    await page.check("#live")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "running")
    await page.reload()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    # Same browser, same owner cookie: the page subscribes to its run again and may feed it.
    await expect(page.locator("#status")).to_have_attribute("data-state", "running")
    await expect(page.locator("#input")).to_be_enabled()
    await page.fill("#input", "again")
    await page.press("#input", "Enter")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(page.locator("#output .out-stdout")).to_have_text("hello again\n")
    cookies = await page.context.cookies()
    owner = next(c for c in cookies if c["name"] == "conveyor_owner")
    assert owner["httpOnly"] and owner["sameSite"] == "Strict"
    assert owner["value"] not in "".join(pages.recorder(page).frames)


# -- dashboard ----------------------------------------------------------------------------------------------------


async def test_dashboard_shows_the_build_cache(cached_sandbox: Runner, serve: ServerFactory, pages: Pages) -> None:
    server = await serve(runner=cached_sandbox)
    before = cached_sandbox.cache_status()["builds"]
    page = await pages.open(server, "/dashboard")
    await expect(page.locator("#stat-cache")).to_have_text(str(before["hits"]))
    code = f'#include <stdio.h>\n/* {new_owner_token()} */\nint main(void) {{ puts("hi"); return 0; }}\n'
    for _ in range(2):
        assert (await submit(server, code, "c", wait=True))["stdout"] == "hi\n"
    await page.reload()
    await expect(page.locator("#stat-cache")).to_have_text(str(before["hits"] + 1))
    await expect(page.locator("#stat-cache-sub")).to_contain_text(f"{before['misses'] + 1} misses")
    # The cache off: the card says so.
    page = await pages.open(await serve(), "/dashboard")
    await expect(page.locator("#stat-cache")).to_have_text("off")


async def test_dashboard_follows_jobs_submitted_by_rest(serve: ServerFactory, pages: Pages) -> None:
    # One slot and two places: a sleeper runs, two wait, the next is refused (503) and one more is rate limited.
    server = await serve(max_concurrent_jobs=1, max_queue_size=2, rate_limit_requests=4)
    page = await pages.open(server, "/dashboard")
    await expect(page.locator("#stat-completed")).to_have_text("0")
    await expect(page.locator("#jobs-empty")).to_be_visible()

    sleeper = await submit(server, SLEEP)
    hello = await submit(server, "print('hello')")
    failing = await submit(server, "exit 3", "bash")
    assert (await submit(server, "print(1)"))["httpStatus"] == 503
    assert (await submit(server, "print(2)"))["httpStatus"] == 429

    await expect(page.locator("#stat-running")).to_have_text("1 / 1")
    await expect(page.locator("#stat-queue")).to_have_text("2")
    await expect(row(page, server, sleeper["jobId"]).locator(".badge")).to_have_text("running")
    await expect(row(page, server, hello["jobId"]).locator(".badge")).to_have_text("queued")
    # A viewer never gets controls, even for jobs that could be stopped.
    await expect(page.locator("#jobs-body button")).to_have_count(0)
    await expect(page.locator("#actions-head")).to_be_hidden()
    await screenshot(page, "dashboard-busy")

    await stop_as_owner(server, sleeper["jobId"])
    await expect(page.locator("#stat-completed")).to_have_text("1")
    await expect(page.locator("#stat-failed")).to_have_text("1")
    await expect(page.locator("#stat-cancelled")).to_have_text("1")
    await expect(page.locator("#stat-rejected")).to_have_text("1")
    await expect(page.locator("#stat-ratelimited")).to_have_text("1")
    await expect(page.locator("#stat-queue")).to_have_text("0")
    await expect(page.locator("#jobs-body tr")).to_have_count(3)
    await expect(row(page, server, failing["jobId"]).locator(".badge")).to_have_text("failed")

    await expect(page.locator(".tab[data-status=failed] .tab-count")).to_have_text("1")
    await expect(page.locator(".tab[data-status=all] .tab-count")).to_have_text("3")
    await page.click(".tab[data-status=failed]")
    await expect(page.locator("#jobs-body tr")).to_have_count(1)
    await expect(page.locator("#jobs-body tr td").nth(2)).to_have_text("bash")
    await page.click(".tab[data-status=all]")
    await page.select_option("#filter-language", "python")
    await expect(page.locator("#jobs-body tr")).to_have_count(2)
    await page.select_option("#filter-language", "")
    await page.fill("#filter-id", handle(server, hello["jobId"])[:8])
    await expect(page.locator("#jobs-body tr")).to_have_count(1)
    await row(page, server, hello["jobId"]).click()
    await expect(page.locator("#detail-list")).to_contain_text(handle(server, hello["jobId"]))
    await expect(page.locator("#detail-list")).to_contain_text("completed")
    await page.fill("#filter-id", "")
    await screenshot(page, "dashboard")


async def test_viewer_is_read_only_and_admin_stops_jobs(serve: ServerFactory, pages: Pages, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    keys.write_text(f'[[keys]]\nname = "ops"\nsha256 = "{digest}"\nadmin = true\n')
    server = await serve(api_keys_file=str(keys), max_concurrent_jobs=1, job_timeout_ms=LONG_JOB_MS)
    viewer = await pages.open(server, "/dashboard")
    admin = await pages.open(server, "/dashboard")
    await admin.fill("#api-key", "cvy_wrong-key")
    await admin.click("#auth-submit")
    await expect(admin.locator("#auth-message")).to_contain_text("Key refused")
    await admin.fill("#api-key", ADMIN_KEY)
    await admin.click("#auth-submit")
    await expect(admin.locator("#admin-badge")).to_have_text("admin")

    # The code and the output carry markers that must never reach a dashboard.
    running = await submit(server, "print('OUT' + 'PUT-7f3a', flush=True)\nimport time\ntime.sleep(60)  # CODE-91c2")
    queued = await submit(server, "print('later')")
    for page in (viewer, admin):
        await expect(row(page, server, running["jobId"]).locator(".badge")).to_have_text("running")
        await expect(row(page, server, queued["jobId"]).locator(".badge")).to_have_text("queued")
    await expect(viewer.locator("#jobs-body button, #jobs-body input, #detail-actions button")).to_have_count(0)
    await expect(row(admin, server, running["jobId"]).locator("[data-action=stop]")).to_have_text("Stop")
    await expect(row(admin, server, queued["jobId"]).locator("[data-action=stop]")).to_have_text("Cancel")
    await screenshot(admin, "dashboard-admin")

    await row(admin, server, queued["jobId"]).locator("[data-action=stop]").click()
    await row(admin, server, running["jobId"]).locator("[data-action=stop]").click()
    for page in (viewer, admin):
        await expect(row(page, server, running["jobId"]).locator(".badge")).to_have_text("cancelled")
        await expect(row(page, server, queued["jobId"]).locator(".badge")).to_have_text("cancelled")
    await expect(admin.locator("#jobs-body [data-action=stop]")).to_have_count(0)
    for page in (viewer, admin):
        content = await page.content()
        frames = "".join(pages.recorder(page).frames)
        for marker in ("PUT-7f3a", "CODE-91c2", "time.sleep"):
            assert marker not in content and marker not in frames


async def test_dashboard_reconnects_after_a_server_restart(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/dashboard")
    await submit(server, "print(1)", wait=True)
    await expect(page.locator("#stat-completed")).to_have_text("1")
    port = server.port
    await stop_server(server)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "closed")

    restarted = await serve(port=port)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    # A fresh snapshot from the new process: its counters start again.
    await expect(page.locator("#stat-completed")).to_have_text("0")
    job = await submit(restarted, "print(2)", wait=True)
    await expect(row(page, restarted, job["id"]).locator(".badge")).to_have_text("completed")
    await expect(page.locator("#stat-completed")).to_have_text("1")


async def test_pages_only_talk_to_their_own_server(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    origin = origin_of(server)
    editor = await pages.open(server, "/")
    await editor_ready(editor)
    await editor.click("#run")
    await expect(editor.locator("#status")).to_have_attribute("data-state", "completed")
    dashboard = await pages.open(server, "/dashboard")
    await expect(dashboard.locator("#jobs-body tr")).to_have_count(1)
    for page in (editor, dashboard):
        urls = pages.recorder(page).urls
        assert f"ws://{origin.removeprefix('http://')}/ws" in urls
        assert any("/static/style.css" in url for url in urls)
        assert pages.recorder(page).outside(origin) == []
    async with aiohttp.ClientSession() as session, session.get(f"{origin}/dashboard") as resp:
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


async def test_a_viewer_sees_no_usable_id_and_an_admin_the_whole_job(
    serve: ServerFactory, pages: Pages, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "ops"\nsha256 = "{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}"\nadmin = true\n'
    )
    server = await serve(api_keys_file=str(keys))
    viewer = await pages.open(server, "/dashboard")
    admin = await pages.open(server, "/dashboard")
    await admin.fill("#api-key", ADMIN_KEY)
    await admin.click("#auth-submit")
    await expect(admin.locator("#admin-badge")).to_have_text("admin")
    job = await submit(server, "print('OUT' + 'PUT-5e1d', input())  # CODE-b77a", wait=True, stdin="IN-c3d9")
    job_id = job["id"]
    for page in (viewer, admin):
        await expect(row(page, server, job_id).locator(".badge")).to_have_text("completed")
        await row(page, server, job_id).click()
    # The viewer: the handle, metadata only; the id appears nowhere, not even in what the socket carried.
    await expect(viewer.locator("#detail-list")).to_contain_text(handle(server, job_id))
    await expect(viewer.locator("#detail-full")).to_be_hidden()
    content, frames = await viewer.content(), "".join(pages.recorder(viewer).frames)
    for secret in (job_id, job_id[:12], "PUT-5e1d", "CODE-b77a", "IN-c3d9"):
        assert secret not in content and secret not in frames
    await screenshot(viewer, "dashboard-viewer-detail")
    # The admin: the id with its #job= link, and the whole job.
    await expect(admin.locator("#detail-list")).to_contain_text(job_id)
    full = admin.locator("#detail-full")
    await expect(full.locator('[data-stream="code"] pre')).to_have_text(
        "print('OUT' + 'PUT-5e1d', input())  # CODE-b77a"
    )
    await expect(full.locator('[data-stream="stdin"] pre')).to_have_text("IN-c3d9")
    await expect(full.locator('[data-stream="stdout"] pre')).to_have_text("OUTPUT-5e1d IN-c3d9\n")
    assert admin.url.endswith(f"#job={job_id}")
    await screenshot(admin, "dashboard-admin-detail")
    # The link opens the job on a fresh dashboard once an admin key is in.
    linked = await pages.open(server, f"/dashboard#job={job_id}")
    await linked.fill("#api-key", ADMIN_KEY)
    await linked.click("#auth-submit")
    await expect(linked.locator('#detail-full [data-stream="stdout"] pre')).to_have_text("OUTPUT-5e1d IN-c3d9\n")
    # A viewer following the link learns nothing.
    stranger = await pages.open(server, f"/dashboard#job={job_id}")
    await expect(stranger.locator("#jobs-body tr")).to_have_count(1)
    await expect(stranger.locator("#detail-full")).to_be_hidden()
    assert "PUT-5e1d" not in await stranger.content()
