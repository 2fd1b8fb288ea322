"""The editor's CodeMirror features in Chromium: highlighting, brackets, search, keyboard exit, themes, restore,
quota, run figures and the phone layout; share links, output order and prompts."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Page, expect

from server.keys import SETTINGS
from server.sandbox.languages import LANGUAGES_FILE
from tests.browser import (
    LONG_JOB_MS,
    Pages,
    ServerFactory,
    code_of,
    editor_ready,
    expect_code,
    origin_of,
    screenshot,
    set_code,
    stop_as_owner,
    stop_server,
    submit,
)
from tests.test_sandbox import PROMPT_WITHOUT_FFLUSH

pytestmark = pytest.mark.browser
SLEEP = "import time\ntime.sleep(60)"
KEY = "cvy_editor-share-key"

LANGUAGES = {
    "python": ("def f(x):\n    return 'hi'  # note\n", "def", "'hi'"),
    "javascript": ("const x = 'hi'; // note\n", "const", "'hi'"),
    "bash": ("if true; then echo 'hi'; fi # note\n", "if", "'hi'"),
    "c": ("int main(void) { return 0; } // note\n", "return", "0"),
    "cpp": ("#include <cstdio>\nint main() { return 0; }\n", "return", "0"),
    "java": ('class Main { String s = "hi"; }\n', "class", '"hi"'),
    "rust": ('fn main() { let s = "hi"; }\n', "fn", '"hi"'),
    "perl": ('my $s = "hi"; # note\n', "my", '"hi"'),
}


SHOWCASE = """#include <stdio.h>

/* Triangular numbers up to n, read from stdin. */
int main(void) {
    int n = 0;
    if (scanf("%d", &n) != 1) return 1;
    for (int i = 1; i <= n; i++) {
        printf("%d: %d\\n", i, i * (i + 1) / 2);
    }
    return 0;
}
"""


async def token_color(page: Page, text: str) -> str:
    """The colour CodeMirror gives the first token whose text is `text` (inside the editor's shadow root)."""
    color: str = await page.evaluate(
        """(text) => {
            const root = document.querySelector('#code-editor').shadowRoot;
            const walker = document.createTreeWalker(root.querySelector('.cm-content'), NodeFilter.SHOW_TEXT);
            while (walker.nextNode()) {
              const node = walker.currentNode;
              if (node.textContent.trim() === text) return getComputedStyle(node.parentElement).color;
            }
            return null;
        }""",
        text,
    )
    return color


async def test_eight_languages_are_highlighted(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    plain = await page.evaluate(
        "getComputedStyle(document.querySelector('#code-editor').shadowRoot.querySelector('.cm-content')).color"
    )
    for language, (code, keyword, literal) in LANGUAGES.items():
        await page.select_option("#language", language)
        await expect(page.locator("#code")).to_have_attribute("data-language", language)
        await set_code(page, code)
        keyword_color, literal_color = await token_color(page, keyword), await token_color(page, literal)
        assert keyword_color and literal_color, (language, keyword_color, literal_color)
        # Keywords and literals get colours of their own, different from plain text and from each other.
        assert len({keyword_color, literal_color, plain}) == 3, (language, keyword_color, literal_color, plain)


async def test_brackets_close_and_match_and_search_finds(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await set_code(page, "")
    await page.focus("#code")
    await page.keyboard.type("print(len([1, 2")
    await expect_code(page, "print(len([1, 2]))")  # each opener got its closer
    await page.keyboard.press("ArrowRight")  # past ], next to its [ ... ] pair
    await expect(page.locator("#code-editor .cm-matchingBracket")).to_have_count(2)
    await page.keyboard.press("Control+f")
    search = page.locator("#code-editor .cm-search input[name=search]")
    await expect(search).to_be_focused()
    await search.fill("len")
    await page.keyboard.press("Enter")
    await expect(page.locator("#code-editor .cm-searchMatch")).to_have_count(1)


async def test_escape_then_tab_leaves_the_editor(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await expect(page.locator("#hint")).to_contain_text("Esc then Tab leaves the editor")
    await set_code(page, "x = 1")
    await page.focus("#code")
    await page.keyboard.press("End")
    await page.keyboard.press("Tab")  # indents: the editor keeps Tab
    await expect(page.locator("#code")).to_be_focused()
    await page.keyboard.press("Escape")
    await page.keyboard.press("Tab")  # now moves focus on, as the hint says
    await expect(page.locator("#code")).not_to_be_focused()
    assert await code_of(page) == "    x = 1"  # the first Tab indented the line, the second inserted nothing


async def test_theme_toggle_themes_the_whole_page_and_persists(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await page.emulate_media(color_scheme="dark")
    await page.select_option("#language", "c")
    await set_code(page, SHOWCASE)
    await page.fill("#stdin", "5\n")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await page.locator("#code").click(position={"x": 200, "y": 12})  # the cursor on line 1: bracket and line marks
    await screenshot(page, "editor-dark", full_page=False)
    toggle = page.locator("#theme-toggle")
    await expect(toggle).to_have_attribute("data-choice", "system")
    await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    dark_bg = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    await toggle.click()  # system -> light
    await expect(page.locator("html")).to_have_attribute("data-theme", "light")
    light_bg = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    editor_bg = await page.evaluate(
        "getComputedStyle(document.querySelector('#code-editor').shadowRoot.querySelector('.cm-editor')).backgroundColor"
    )
    assert dark_bg != light_bg and editor_bg in ("rgb(251, 252, 253)",)  # the editor follows the page
    await screenshot(page, "editor-light", full_page=False)
    await page.reload()
    await expect(page.locator("html")).to_have_attribute("data-theme", "light")  # remembered
    await page.locator("#theme-toggle").click()  # light -> dark
    await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    dashboard = await page.context.new_page()
    await dashboard.goto(page.url + "dashboard")
    await expect(dashboard.locator("html")).to_have_attribute("data-theme", "dark")  # every page


async def test_output_is_restored_after_a_reload(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await set_code(page, "import sys\nprint('out-' + input())\nprint('err-line', file=sys.stderr)")
    await page.fill("#stdin", "abc\n")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    status = await page.locator("#status").text_content()
    # Reloaded, the page shows the run its address names (from the server); opened plainly, the browser's own copy.
    for path in (page.url, origin_of(server) + "/"):
        await page.goto(path)
        await editor_ready(page)
        await expect(page.locator("#output .out-stdout")).to_have_text("out-abc\n", use_inner_text=True)
        await expect(page.locator("#output .out-stderr")).to_have_text("err-line\n", use_inner_text=True)
        await expect(page.locator("#status")).to_have_text(status or "")
        await expect(page.locator("#stdin")).to_have_value("abc\n")
        await expect(page.locator("#figures [data-figure=run]")).to_be_visible()
    await expect(page.locator("#output")).to_contain_text("(restored: your last run")


async def test_saved_output_is_bounded(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await set_code(page, "print('x' * 300_000)")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    saved = await page.evaluate("localStorage.getItem('conveyor.lastRun').length")
    assert 64 * 1024 < saved < 80 * 1024
    await page.goto(page.url.split("?")[0])  # the saved copy, not the run the address names
    await expect(page.locator("#output")).to_contain_text("(the saved copy of this output stops here)")


async def test_quota_is_shown_and_a_429_counts_down(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(rate_limit_requests=2, rate_limit_window_ms=20_000), "/")
    await editor_ready(page)
    quota = page.locator("#quota")
    await expect(quota).to_have_text("2 / 2 runs left")
    await set_code(page, "print(1)")
    for left in (1, 0):
        await page.click("#run")
        await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
        await expect(quota).to_contain_text(f"{left} / 2 runs left" if left else "rate limited")
    # Out of runs: the countdown says how long, the Run button waits, and it comes back when a token does.
    await expect(quota).to_have_attribute("data-state", "limited")
    await expect(quota).to_have_text(re.compile(r"^rate limited · next run in \d+ s$"))
    await expect(page.locator("#run")).to_be_disabled()
    await screenshot(page, "editor-rate-limited")
    await expect(page.locator("#run")).to_be_enabled(timeout=30_000)
    await expect(quota).to_have_text("1 / 2 runs left")


async def test_a_websocket_429_starts_the_countdown(serve: ServerFactory, pages: Pages) -> None:
    server = await serve(rate_limit_requests=1, rate_limit_window_ms=60_000)
    page = await pages.open(server, "/")
    await editor_ready(page)
    # Another client of the same address spends the token the page still believes it has.
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url("/run"), json={"language": "bash", "code": "true"}) as resp:
            assert resp.status == 200
    await page.click("#run")
    await expect(page.locator("#status")).to_have_text(re.compile("^not started: Rate limit exceeded"))
    await expect(page.locator("#quota")).to_have_text(re.compile(r"^rate limited · next run in \d+ s$"))
    await expect(page.locator("#run")).to_be_disabled()


async def test_compile_errors_show_compile_time_not_a_run_time(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await page.select_option("#language", "c")
    await set_code(page, "int main(void) { return missing; }\n")
    await page.click("#run")
    compile_error = re.compile(r"^failed: compile_error(, compiled for [\d.]+ m?s)?$")
    await expect(page.locator("#status")).to_have_text(compile_error)
    await expect(page.locator("#output .compile-block")).to_contain_text("missing")
    await expect(page.locator("#figures [data-figure=run]")).to_have_count(0)
    await expect(page.locator("#figures [data-figure=compile]")).to_be_visible()
    # A program that compiles and runs: both figures.
    await set_code(page, '#include <stdio.h>\nint main(void) { puts("ok"); return 0; }\n')
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(page.locator("#figures [data-figure=compile]")).to_be_visible()
    await expect(page.locator("#figures [data-figure=run]")).to_be_visible()


async def test_figures_the_server_sends_are_shown(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await set_code(page, "x = bytearray(20 * 1024 * 1024)\nprint(len(x))")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(page.locator("#figures [data-figure=run]")).to_be_visible()
    # The job's CPU time and memory peak, measured by the sandbox on the job's cgroup.
    await expect(page.locator("#figures [data-figure=CPU]")).to_have_text(re.compile(r"^CPU(\d+|<1) ms$"))
    memory = re.compile(r"^memory(2\d|[3-9]\d)(\.\d)? MiB$")  # a 20 MiB bytearray and the interpreter
    await expect(page.locator("#figures [data-figure=memory]")).to_have_text(memory)


async def test_no_horizontal_overflow_on_a_phone(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    for path in ("/", "/dashboard", "/docs"):
        page = await pages.open(server, path, viewport={"width": 390, "height": 844}, wait_socket=path != "/docs")
        if path == "/":
            await editor_ready(page)
            await page.click("#run")
            await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
        width, inner = await page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        assert width <= inner, (path, width, inner)
        if path == "/":
            await screenshot(page, "editor-phone")


# -- share links, output order, prompts ------------------------------------------------------------------------

SHARED = "import sys\nname = input()\nprint('out-' + name)\nprint('err-' + name, file=sys.stderr)\n"


async def run_to_end(page: Page, code: str, *, stdin: str = "") -> None:
    """Run `code` from the editor, with `stdin`, and wait until it has completed."""
    await set_code(page, code)
    await page.fill("#stdin", stdin)
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")


async def job_in_url(page: Page) -> str:
    match = re.search(r"[?&]job=([0-9a-f]{32})$", page.url)
    assert match, page.url
    return match.group(1)


async def test_a_share_link_restores_the_run_in_another_browser_which_runs_it_again(
    serve: ServerFactory, pages: Pages
) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await expect(page.locator("#copy-link")).to_be_hidden()
    await run_to_end(page, SHARED, stdin="ada\n")
    job_id = await job_in_url(page)  # the address bar names the run (replaceState)
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin_of(server))
    await page.click("#copy-link")
    await expect(page.locator("#copy-link")).to_have_text("Link copied")
    assert await page.evaluate("navigator.clipboard.readText()") == page.url
    status = await page.locator("#status").text_content()
    # Another browser (no cookie: not the owner) holding the link sees the whole run, in the order it was written.
    other = await pages.open(server, f"/?job={job_id}")
    await expect(other.locator("#status")).to_have_text(status or "")
    assert await code_of(other) == SHARED
    await expect(other.locator("#stdin")).to_have_value("ada\n")
    await expect(other.locator("#output .out")).to_have_text(["out-ada\n", "err-ada\n"], use_inner_text=True)
    await expect(other.locator("#output .out-stderr")).to_have_count(1)
    await expect(other.locator("#figures [data-figure=run]")).to_be_visible()
    await expect(other.locator("#copy-link")).to_be_visible()
    await screenshot(other, "editor-shared", full_page=False)
    # Run again: the restored code runs as a new job of this browser's own, with a link of its own.
    await other.fill("#stdin", "bob\n")
    await other.click("#run")
    await expect(other.locator("#output")).to_contain_text("out-bob")
    await expect(other.locator("#status")).to_have_attribute("data-state", "completed")
    assert await job_in_url(other) != job_id


async def test_a_share_link_nobody_may_read_says_so(serve: ServerFactory, pages: Pages, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[keys]]\nname = "alice"\nsha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n')
    server = await serve(api_keys_file=str(keys))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        async with session.post(server.make_url("/run"), json={"language": "bash", "code": "echo secret"}) as resp:
            keyed = (await resp.json())["id"]  # alice's job: only alice may read it, even with its id
    for job_id in ("0" * 32, "not-an-id", keyed):
        page = await pages.open(server, f"/?job={job_id}")
        await expect(page.locator("#status")).to_have_text("shared run not found")
        await expect(page.locator("#output .out-error")).to_contain_text("No run can be shown for this link")
        await expect(page.locator("#output")).not_to_contain_text("secret")
        await expect(page.locator("#copy-link")).to_be_hidden()
        await expect(page.locator("#run")).to_be_enabled()  # the editor still works
    assert await code_of(page) != "echo secret"


async def test_a_shared_running_job_is_watched_not_driven(serve: ServerFactory, pages: Pages) -> None:
    server = await serve(job_timeout_ms=LONG_JOB_MS)
    job = await submit(server, "print('started', flush=True)\n" + SLEEP)
    page = await pages.open(server, f"/?job={job['jobId']}")
    await expect(page.locator("#output .out-stdout")).to_have_text("started\n", use_inner_text=True)
    await expect(page.locator("#status")).to_have_attribute("data-state", "running")
    await page.click("#stop")
    await expect(page.locator("#output .out-error")).to_contain_text("only whoever started this run")
    await stop_as_owner(server, job["jobId"])  # its owner can
    await expect(page.locator("#status")).to_have_attribute("data-state", "cancelled")


async def test_a_link_to_a_run_the_server_no_longer_has_shows_this_browsers_copy(
    serve: ServerFactory, pages: Pages
) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await run_to_end(page, "print('kept')")
    port, link = server.port, page.url
    await stop_server(server)
    await serve(port=port)  # restarted, memory backend: the job is gone, as an expired one is
    await page.goto(link)
    await expect(page.locator("#output")).to_contain_text("(restored: your last run")
    await expect(page.locator("#output .out-stdout")).to_have_text("kept\n", use_inner_text=True)
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")


# Each line waits until the server has read the one before (FIONREAD on the pipe: no clock), so the order the
# program wrote in is knowable; everything after the two pipes (coalescing, store, hub, page) must keep it.
ALTERNATING = """import fcntl, struct, sys, termios
def drained(stream):
    while struct.unpack("i", fcntl.ioctl(stream.fileno(), termios.FIONREAD, b"    "))[0]:
        pass
for i in range(12):
    for stream, name in ((sys.stdout, "out"), (sys.stderr, "err")):
        print(name, i, file=stream, flush=True)
        drained(stream)
"""


async def test_stdout_and_stderr_are_shown_in_the_order_they_were_written(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await run_to_end(page, ALTERNATING)
    # What the reader sees: every line once, in its stream's colour and in the order its stream wrote it. Across the
    # two pipes, the order is the order the server read them in: each write waits until the pipe is drained, but
    # on a loaded machine the server may still handle two drained reads in one turn (out 0, out 1, then err 0).
    shown = await output_lines(page)
    assert [line for stream, line in shown if stream == "stdout"] == [f"out {i}\n" for i in range(12)]
    assert [line for stream, line in shown if stream == "stderr"] == [f"err {i}\n" for i in range(12)]
    # Interleaved, not stdout then stderr: the first stderr line comes before the last stdout line.
    assert shown.index(("stderr", "err 0\n")) < shown.index(("stdout", "out 11\n")), shown
    # A shared link replays the job's events: exactly what the live page showed, in the same order.
    other = await pages.open(server, f"/?job={await job_in_url(page)}")
    await expect(other.locator("#status")).to_have_attribute("data-state", "completed")
    assert await output_lines(other) == shown


async def output_lines(page: Page) -> list[tuple[str, str]]:
    """The output pane's program text, line by line, with the stream each line is shown as."""
    spans = page.locator("#output .out-stdout, #output .out-stderr")
    shown: list[list[str]] = await spans.evaluate_all("nodes => nodes.map(n => [n.dataset.stream, n.innerText])")
    return [(stream, line) for stream, text in shown for line in text.splitlines(keepends=True)]


async def test_a_c_prompt_without_fflush_shows_before_the_input(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await page.select_option("#language", "c")
    await set_code(page, PROMPT_WITHOUT_FFLUSH)
    await page.check("#live")
    await page.click("#run")
    await expect(page.locator("#output .out-stdout")).to_have_text("name? ", use_inner_text=True)
    await expect(page.locator("#status")).to_have_attribute("data-state", "running")  # waiting in scanf
    await page.fill("#input", "ada")
    await page.press("#input", "Enter")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(page.locator("#output")).to_have_text(re.compile(r"^name\? ada\nhi ada\n"), use_inner_text=True)


# -- stdin: end of input, live input, large input -----------------------------------------------------------------

READ_ALL = "import sys\ndata = sys.stdin.read()\nprint('words', len(data.split()))\n"
DIGEST = "import hashlib, sys\ndata = sys.stdin.buffer.read()\nprint(len(data), hashlib.sha256(data).hexdigest())\n"


async def test_a_program_that_reads_to_the_end_of_input_finishes(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await expect(page.locator("#live")).not_to_be_checked()  # the default: stdin ends after the pane's text
    await expect(page.locator("#pane-note")).to_have_text("sent whole, then end of input")
    await run_to_end(page, READ_ALL, stdin="a b\nc\n")
    await expect(page.locator("#output .out-stdout")).to_have_text("words 3\n", use_inner_text=True)
    await page.select_option("#language", "bash")
    await run_to_end(page, "cat; echo done", stdin="from the pane\n")
    await expect(page.locator("#output .out-stdout")).to_have_text("from the pane\ndone\n", use_inner_text=True)
    # A visitor opening the link and pressing Run gets the same: no live session, no wait for a timeout.
    other = await pages.open(server, f"/?job={await job_in_url(page)}")
    await expect(other.locator("#status")).to_have_attribute("data-state", "completed")
    await other.click("#run")
    await expect(other.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(other.locator("#output .out-stdout")).to_have_text("from the pane\ndone\n", use_inner_text=True)


async def test_a_live_run_says_when_it_may_be_waiting_for_input(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await page.check("#live")
    await expect(page.locator("#pane-note")).to_have_text("sent first; stdin then stays open for live input")
    await set_code(page, "print('name?', flush=True)\nprint('hi', input())\n" + READ_ALL)
    await page.fill("#stdin", "")
    await page.click("#run")
    hint = page.locator("#input-hint")
    await expect(hint).to_have_text(re.compile("^No output for a while: the program may be waiting for input"))
    await expect(page.locator("#input-form")).to_have_attribute("data-waiting", "true")
    await expect(page.locator("#status-announce")).to_have_text(re.compile("may be waiting for input"))
    await page.fill("#input", "ada")
    await page.press("#input", "Enter")
    await expect(page.locator("#output")).to_contain_text("hi ada")
    await expect(hint).to_be_visible()  # reading to the end now: still waiting, until EOF
    await page.click("#eof")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(hint).to_be_hidden()
    await expect(page.locator("#output")).to_contain_text("words 0")
    await page.reload()
    await expect(page.locator("#live")).to_be_checked()  # remembered


async def test_the_status_is_announced_once_per_state_not_per_tick(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await expect(page.locator("#status")).not_to_have_attribute("role", "status")  # the ticking clock is not read
    await page.evaluate(
        """() => {
            window.announced = [];
            const node = document.querySelector('#status-announce');
            new MutationObserver(() => window.announced.push(node.textContent))
              .observe(node, {childList: true, characterData: true, subtree: true});
        }"""
    )
    await run_to_end(page, "import time\nfor i in range(3):\n    time.sleep(0.4)\n    print(i, flush=True)\n")
    announced = await page.evaluate("window.announced")
    # submitting, queued, running, completed: one each, however long the run ticked.
    assert announced.count("running") == 1 and len(announced) <= 4, announced
    assert announced[-1].startswith("completed"), announced


async def test_a_large_stdin_goes_in_frames_under_the_message_cap(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    cap = server.app[SETTINGS].ws_max_message_bytes
    # 300 KB of text with two- and four-byte characters (a surrogate pair must not be split between frames).
    text = "line é 😀 " * 30_000
    await page.evaluate("(text) => { document.querySelector('#stdin').value = text; }", text)
    await set_code(page, DIGEST)
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    data = text.encode()
    expected = f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"
    await expect(page.locator("#output .out-stdout")).to_have_text(expected, use_inner_text=True)
    sent = pages.recorder(page).sent
    assert len(data) > cap and max(sent) <= cap, (len(data), max(sent))
    # Over the server's stdin limit: refused on the page, naming the limit, before anything is sent.
    small = await pages.open(await serve(max_stdin_bytes=1000), "/")
    await editor_ready(small)
    await small.fill("#stdin", "x" * 2000)
    await small.click("#run")
    await expect(small.locator("#status")).to_have_text(
        "not started: the input is 2.0 KiB; this server takes at most 1000 B"
    )
    await expect(small.locator("#run")).to_be_enabled()


# -- layout ---------------------------------------------------------------------------------------------------------


async def test_a_long_status_does_not_move_the_panes(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/", viewport={"width": 900, "height": 800})
    await editor_ready(page)
    before = await page.locator(".code-pane").bounding_box()
    await set_code(page, "import sys\nprint('x' * 2_000_000)\nsys.exit(3)")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "failed")
    text = await page.locator("#status").text_content() or ""
    assert len(text) > 60 and await page.locator("#status").get_attribute("title") == text
    assert await page.locator(".code-pane").bounding_box() == before


async def test_the_figures_bar_keeps_the_last_output_line_in_view(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await run_to_end(page, "for i in range(300):\n    print('line', i)\n")
    await expect(page.locator("#figures")).to_be_visible()
    gap = await page.evaluate(
        "(() => { const o = document.querySelector('#output'); "
        "return o.scrollHeight - o.scrollTop - o.clientHeight; })()"
    )
    assert gap <= 1, gap


async def test_run_on_a_phone_brings_the_output_into_view(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/", viewport={"width": 390, "height": 700})
    await editor_ready(page)
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    top, bottom, height = await page.evaluate(
        "(() => { const b = document.querySelector('.output-pane').getBoundingClientRect(); "
        "return [b.top, b.bottom, innerHeight]; })()"
    )
    assert 0 <= top and bottom <= height, (top, bottom, height)


async def test_the_prebuilt_binary_language_is_not_offered_in_the_picker(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/runtimes")) as resp:
            offered = {r["language"] for r in await resp.json()}
    assert "executable" in offered  # the API keeps it (Judge0's language 44)
    page = await pages.open(server, "/")
    await editor_ready(page)
    values = await page.locator("#language option").evaluate_all("options => options.map(o => o.value)")
    assert "executable" not in values and set(values) == offered - {"executable"}


# -- code links -------------------------------------------------------------------------------------------------------


async def test_a_code_link_carries_the_program_and_no_server_keeps_it(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await page.select_option("#language", "bash")
    program = 'read name\necho "hi $name"  # CODE-LINK-7f3e\n'
    await set_code(page, program)
    await page.fill("#stdin", "ada\n")
    await page.click("#tab-tests")
    await page.click("#add-test")
    await page.locator("#tests .test-stdin").fill("bob")
    await page.locator("#tests .test-expected").fill("hi bob")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin_of(server))
    await page.click("#code-link")
    await expect(page.locator("#code-link")).to_have_text("Code link copied")
    link = await page.evaluate("navigator.clipboard.readText()")
    assert link.startswith(origin_of(server) + "/#code=") and "CODE-LINK" not in link  # compressed
    other = await pages.open(server, "/" + link.split("/", 3)[3])
    await expect(other.locator("#language")).to_have_value("bash")
    await expect_code(other, program)
    await expect(other.locator("#stdin")).to_have_value("ada\n")
    await expect(other.locator("#tab-tests")).to_have_attribute("aria-selected", "true")
    await expect(other.locator("#tests .test-expected")).to_have_value("hi bob")
    await expect(other.locator("#output")).to_contain_text("opened from a code link")
    # The fragment never travels: no request of either page carried the program, and no job exists.
    assert not any("CODE-LINK" in url or "#code=" in url for url in pages.recorder(other).urls)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/queue/status")) as resp:
            assert (await resp.json())["totalQueued"] == 0
    damaged = await pages.open(server, "/#code=AAAA-not-deflate")
    await expect(damaged.locator("#output .out-error")).to_contain_text("This code link is damaged")
    await expect(damaged.locator("#run")).to_be_enabled()


async def test_a_run_link_says_how_long_it_lives(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(job_retention_seconds=7200), "/")
    await editor_ready(page)
    await expect(page.locator("#share-note")).to_be_hidden()
    await run_to_end(page, "print(1)")
    await expect(page.locator("#share-note")).to_have_text("run link: ~2 h")
    assert "A code link does not expire" in (await page.locator("#share-note").get_attribute("title") or "")


# -- options, download, font size -------------------------------------------------------------------------------------


async def test_options_go_with_the_run_and_are_kept(serve: ServerFactory, pages: Pages) -> None:
    server = await serve()
    page = await pages.open(server, "/")
    await editor_ready(page)
    await run_to_end(page, "print('plain')")
    await page.click("#tab-options")
    await expect(page.locator("#opt-flags")).to_be_disabled()  # Python has no compile stage
    await expect(page.locator("#opt-flags-note")).to_have_text("(this language is not compiled)")
    await page.fill("#opt-args", "one two\nthree\n")
    await page.fill("#opt-timeout", "3000")
    await page.fill("#opt-memory", "128")
    await page.select_option("#opt-font", "18")
    size = "getComputedStyle(document.querySelector('#code-editor').shadowRoot.querySelector('.cm-editor')).fontSize"
    assert await page.evaluate(size) == "18px"
    await set_code(page, "import sys\nprint(sys.argv[1:])")
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(page.locator("#output .out-stdout")).to_have_text("['one two', 'three']\n", use_inner_text=True)
    job = await (await page.request.get(f"{origin_of(server)}/queue/job/{await job_in_url(page)}")).json()
    assert (job["timeoutMs"], job["memoryLimitMb"], job["args"]) == (3000, 128, ["one two", "three"])
    # A compiled language takes compiler flags.
    await page.fill("#opt-args", "")
    await page.select_option("#language", "c")
    await expect(page.locator("#opt-flags")).to_be_enabled()
    await page.fill("#opt-flags", "-DANSWER=42")
    await set_code(page, '#include <stdio.h>\nint main(void) { printf("%d\\n", ANSWER); return 0; }\n')
    await page.click("#run")
    await expect(page.locator("#status")).to_have_attribute("data-state", "completed")
    await expect(page.locator("#output .out-stdout")).to_have_text("42\n", use_inner_text=True)
    await page.reload()
    await expect(page.locator("#language")).to_have_value("c")  # remembered, as the options are
    await expect(page.locator("#opt-flags")).to_have_value("-DANSWER=42")
    await expect(page.locator("#opt-font")).to_have_value("18")
    assert await page.evaluate(size) == "18px"


async def test_the_code_downloads_as_a_file(serve: ServerFactory, pages: Pages) -> None:
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    await set_code(page, "print('saved')\n")
    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    assert download.suggested_filename == "main.py"
    assert Path(await download.path()).read_text() == "print('saved')\n"


# Modes of languages.toml with no CodeMirror 6 package or legacy mode bundled: shown as plain text (docs/languages.md).
PLAIN_MODES = {"php", "elixir", "nim", "prolog", "ada", "llvm", "plaintext", "text", "executable", ""}


async def test_every_configured_language_mode_has_highlighting(serve: ServerFactory, pages: Pages) -> None:
    # The picker offers every installed language: each one's mode (languages.toml) must be one the bundle knows.
    modes = {entry.get("mode", name) for name, entry in tomllib.loads(LANGUAGES_FILE.read_text()).items()}
    page = await pages.open(await serve(), "/")
    await editor_ready(page)
    known = await page.evaluate("(modes) => modes.filter((m) => CM.languageFor(m) !== null)", sorted(modes))
    assert set(modes) - set(known) <= PLAIN_MODES, sorted(set(modes) - set(known) - PLAIN_MODES)
