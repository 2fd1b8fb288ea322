"""Piston v2 compat (`/api/v2`): the npm piston-client, Piston's messages and stages, and its WebSocket protocol."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from server.compat.piston.result import OutputTape
from server.compat.piston.runtimes import semver_range
from server.queue.jobs import ExecutionResult
from tests.boundary import STALL_BOUND_S, while_healthy
from tests.conftest import AppClientFactory

Client = TestClient[Request, Application]
NPM = Path(__file__).parent / "npm"


async def piston_client(client: Client, action: str, *args: Any) -> Any:
    """Run the npm piston-client (tests/npm/piston.mjs) against the test server; what it returned."""
    node = shutil.which("node")
    assert node is not None, "node is needed (the sandbox's javascript runtime)"
    assert (NPM / "node_modules" / "piston-client").is_dir(), "run `make install-test`: it installs tests/npm"
    server = str(client.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        node,
        str(NPM / "piston.mjs"),
        server,
        action,
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def execute(client: Client, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    response = await client.post("/api/v2/execute", json=body, headers=headers)
    return response.status, await response.json()


def python(code: str, **extra: Any) -> dict[str, Any]:
    return {"language": "python", "version": "*", "files": [{"content": code}], **extra}


# -- the npm piston-client ------------------------------------------------------------------------------------


async def test_piston_client_lists_runtimes_under_pistons_names(client: Client) -> None:
    runtimes = await piston_client(client, "runtimes")
    native = {r["language"]: r["version"] for r in await (await client.get("/runtimes")).json()}
    by_name = {r["language"]: r for r in runtimes}
    assert by_name["python"]["version"] == native["python"]
    assert by_name["c++"] == {"language": "c++", "version": native["cpp"], "aliases": ["cpp", "g++"], "runtime": "gcc"}
    assert by_name["javascript"]["runtime"] == "node"
    assert "cpp" not in by_name


async def test_piston_client_executes_with_its_defaults(client: Client) -> None:
    # The npm client sends its body as text/plain (node-fetch's default for a string): stock Piston answers 415, and
    # so do we (a cross-site form can send text/plain). What it sends, sent as JSON, runs: -1 memory limits, args.
    code = "import sys\nprint(sys.argv[1:], input())"
    refused = await piston_client(client, "execute", "python", code, {"stdin": "from stdin"})
    assert refused == {"message": "requests must be of type application/json"}
    body = {
        **python(code, stdin="from stdin", args=["1", "2", "3"]),
        **{f"{stage}_memory_limit": -1 for stage in ("compile", "run")},
    }
    status, result = await execute(client, body)
    assert status == 200 and result["language"] == "python"
    assert result["run"]["stdout"] == "['1', '2', '3'] from stdin\n"
    assert result["run"]["code"] == 0 and result["run"]["signal"] is None
    assert result["run"]["output"] == result["run"]["stdout"]
    assert "compile" not in result


async def test_a_failed_compile_is_reported_as_piston_reports_it(client: Client) -> None:
    _, result = await execute(client, {"language": "c++", "version": "*", "files": [{"content": "int main( {"}]})
    assert result["compile"]["code"] != 0
    assert "error" in result["compile"]["stderr"] and result["compile"]["output"] == result["compile"]["stderr"]
    assert result["run"] == result["compile"]  # v2.js: `run` is the compile stage when the run never started


async def test_compiled_language_reports_both_stages(client: Client) -> None:
    status, result = await execute(
        client,
        {"language": "c", "version": "*", "files": [{"content": '#include <stdio.h>\nint main(){puts("c");}'}]},
    )
    assert status == 200
    assert result["compile"]["code"] == 0 and result["compile"]["status"] is None
    assert result["run"]["stdout"] == "c\n" and result["run"]["code"] == 0


# -- validation: Piston's messages ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"version": "*", "files": []}, "language is required as a string"),
        ({"language": "python", "files": []}, "version is required as a string"),
        ({"language": "python", "version": "*"}, "files is required as an array"),
        ({"language": "python", "version": "*", "files": [{"name": "a"}]}, "files[0].content is required as a string"),
        (
            {"language": "no-such-lang", "version": "*", "files": [{"content": "x"}]},
            "no-such-lang-* runtime is unknown",
        ),
        ({"language": "python", "version": "0.0.1", "files": [{"content": "x"}]}, "python-0.0.1 runtime is unknown"),
        (
            {"language": "python", "version": "*", "files": [{"content": "eA==", "encoding": "base64"}]},
            "files must include at least one utf8 encoded file",
        ),
        (python("x", run_timeout="3000"), "If specified, run_timeout must be a number"),
        (python("x", run_timeout=10**9), "run_timeout cannot exceed the configured limit of 5000"),
        (python("x", compile_cpu_time=-5), "compile_cpu_time must be non-negative"),
        (python("x", run_memory_limit=1 << 40), f"run_memory_limit cannot exceed the configured limit of {256 << 20}"),
    ],
)
async def test_bad_requests_get_pistons_messages(client: Client, body: dict[str, Any], message: str) -> None:
    status, answer = await execute(client, body)
    assert (status, answer) == (400, {"message": message})


async def test_native_validation_speaks_pistons_error_shape(client: Client) -> None:
    status, answer = await execute(client, python("x", args=[1, 2]))
    assert status == 400 and "args" in answer["message"] and set(answer) == {"message"}


async def test_body_must_be_json(client: Client) -> None:
    # As stock Piston: anything not labelled application/json is 415 (tests/test_compat.py tries the others).
    response = await client.post(
        "/api/v2/execute", data="a=b", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (response.status, await response.json()) == (415, {"message": "requests must be of type application/json"})


async def test_versions_match_as_semver_ranges(client: Client) -> None:
    version = next(
        r["version"] for r in await (await client.get("/api/v2/runtimes")).json() if r["language"] == "python"
    )
    major = version.split(".")[0]
    for wanted in ("*", f"{major}.x", f"^{major}", version, f">={major} <{int(major) + 1}"):
        status, result = await execute(client, python("print(1)", version=wanted))
        assert (status, result["version"]) == (200, version), wanted


async def test_our_own_names_work_too(client: Client) -> None:
    status, result = await execute(client, {"language": "cpp", "version": "*", "files": [{"content": "int main(){}"}]})
    assert (status, result["language"]) == (200, "c++")


# -- the run stage ---------------------------------------------------------------------------------------------


async def test_non_zero_exit_is_re_with_isolates_message(client: Client) -> None:
    _, result = await execute(client, python("raise SystemExit(3)"))
    run = result["run"]
    assert (run["code"], run["signal"], run["status"], run["message"]) == (3, None, "RE", "Exited with error status 3")


async def test_a_signal_is_sg(client: Client) -> None:
    _, result = await execute(client, python("import os\nos.kill(os.getpid(), 11)"))
    run = result["run"]
    assert (run["code"], run["signal"], run["status"]) == (None, "SIGSEGV", "SG")
    assert run["message"] == "Caught fatal signal 11"


async def test_wall_timeout_is_to_with_sigkill(client: Client) -> None:
    _, result = await execute(client, python("import time\ntime.sleep(30)", run_timeout=300))
    run = result["run"]
    assert (run["status"], run["signal"], run["code"]) == ("TO", "SIGKILL", None)
    assert run["message"] == "Time limit exceeded (wall clock)"


async def test_output_interleaves_stdout_and_stderr_in_write_order(client: Client) -> None:
    code = (
        "import sys, time\nfor s in (sys.stdout, sys.stderr, sys.stdout):\n"
        "    print(s.name, file=s, flush=True)\n    time.sleep(0.3)"
    )
    _, result = await execute(client, python(code))
    run = result["run"]
    assert run["stdout"] == "<stdout>\n<stdout>\n" and run["stderr"] == "<stderr>\n"
    assert run["output"] == "<stdout>\n<stderr>\n<stdout>\n"


async def test_stdin_gets_pistons_trailing_newline(client: Client) -> None:
    _, result = await execute(client, python("import sys\nprint(repr(sys.stdin.read()))", stdin="no newline"))
    assert result["run"]["stdout"] == "'no newline\\n'\n"


def test_output_tape_is_bounded_and_falls_back_to_the_streams() -> None:
    tape = OutputTape(limit=10)
    for stream, data in (("stdout", "12345"), ("stderr", "67890"), ("stdout", "x")):
        tape({"type": "output", "jobId": "j", "seq": 1, "stream": stream, "data": data})
    result = ExecutionResult(stdout="12345x", stderr="67890")
    assert tape.output(result) == "12345x67890"
    small = OutputTape(limit=100)
    small({"type": "output", "jobId": "j", "seq": 1, "stream": "stderr", "data": "e"})
    assert small.output(ExecutionResult(stdout="o", stderr="e")) == "oe"  # what it saw is not the whole output


# -- the same queue, limiter and dashboard ----------------------------------------------------------------------


async def test_piston_jobs_go_through_the_queue_and_its_topic(client: Client) -> None:
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "topic": "queue"})
        await execute(client, python("print(1)"))
        kinds = []
        while "completed" not in kinds:
            message = await ws.receive_json(timeout=30)
            if message.get("handle"):  # the queue topic names other people's jobs by handle only
                kinds.append(message["type"])
                assert message.get("language", "python") == "python"
    stats = await (await client.get("/queue/status")).json()
    assert stats["totalCompleted"] == 1
    assert kinds[0] == "queued"


async def test_execute_draws_from_the_submit_bucket(app_client: AppClientFactory) -> None:
    client = await app_client(rate_limit_requests=1, rate_limit_burst=1)
    status, _ = await execute(client, python("print(1)"))
    assert status == 200
    status, answer = await execute(client, python("print(1)"))
    assert status == 429 and "message" in answer


async def test_packages_lists_each_installed_package_once(client: Client) -> None:
    packages = await (await client.get("/api/v2/packages")).json()
    names = [p["language"] for p in packages]
    assert names.count("gcc") == 1 and "node" in names and "c++" not in names
    assert all(p["installed"] is True for p in packages)
    response = await client.post("/api/v2/packages", json={"language": "bash", "version": "5.x"})
    assert response.status == 405 and "message" in await response.json()


async def test_several_files_with_hex_and_base64(client: Client) -> None:
    files = [
        {"name": "main.py", "content": "import helper\nprint(helper.VALUE, open('data.bin', 'rb').read())"},
        {"name": "helper.py", "content": b"VALUE = 42\n".hex(), "encoding": "hex"},
        {"name": "data.bin", "content": "AAE=", "encoding": "base64"},
    ]
    _, result = await execute(client, {"language": "python", "version": "*", "files": files})
    assert result["run"]["stdout"] == "42 b'\\x00\\x01'\n"


async def test_run_memory_limit_is_applied(client: Client) -> None:
    code = "x = bytearray(200 * 1024 * 1024)\nprint('allocated')"
    _, result = await execute(client, python(code, run_memory_limit=64 << 20))
    assert result["run"]["stdout"] == "" and result["run"]["status"] in ("RE", "SG")


# -- the WebSocket ---------------------------------------------------------------------------------------------


async def messages_until_close(ws: Any) -> list[dict[str, Any]]:
    received = []
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            received.append(json.loads(message.data))
    return received


async def test_socket_runs_an_interactive_program(client: Client) -> None:
    async with client.ws_connect("/api/v2/connect") as ws:
        await ws.send_json({"type": "init", **python("print(input()[::-1])")})
        await ws.send_json({"type": "data", "stream": "stdin", "data": "hello\n"})
        received = await messages_until_close(ws)
    assert ws.close_code == 4999
    assert received[0]["type"] == "runtime" and received[0]["language"] == "python"
    assert {"type": "stage", "stage": "run"} in received
    assert {"type": "data", "stream": "stdout", "data": "olleh\n"} in received
    assert received[-1] == {"type": "exit", "stage": "run", "code": 0, "signal": None}


async def test_socket_eof_closes_stdin(client: Client) -> None:
    async with client.ws_connect("/api/v2/connect") as ws:
        await ws.send_json({"type": "init", **python("import sys\nprint(len(sys.stdin.read()))")})
        await ws.send_json({"type": "data", "stream": "stdin", "data": "abc", "eof": True})
        received = await messages_until_close(ws)
    assert {"type": "data", "stream": "stdout", "data": "3\n"} in received


async def test_socket_signal_really_kills(client: Client) -> None:
    async with client.ws_connect("/api/v2/connect") as ws:
        await ws.send_json({"type": "init", **python("print('up', flush=True)\nwhile True: pass")})
        while (await ws.receive_json(timeout=30)).get("type") != "data":
            pass
        await ws.send_json({"type": "signal", "signal": "SIGKILL"})
        received = await messages_until_close(ws)
    assert ws.close_code == 4999
    assert received[-1] == {"type": "exit", "stage": "run", "code": None, "signal": "SIGKILL"}


async def test_socket_reports_compile_and_run_stages(client: Client) -> None:
    code = '#include <stdio.h>\nint main(){puts("compiled");}'
    async with client.ws_connect("/api/v2/connect") as ws:
        await ws.send_json({"type": "init", "language": "c", "version": "*", "files": [{"content": code}]})
        received = [m for m in await messages_until_close(ws) if m["type"] != "runtime"]
    assert received == [
        {"type": "stage", "stage": "compile"},
        {"type": "exit", "stage": "compile", "code": 0, "signal": None},
        {"type": "stage", "stage": "run"},
        {"type": "data", "stream": "stdout", "data": "compiled\n"},
        {"type": "exit", "stage": "run", "code": 0, "signal": None},
    ]


async def test_socket_failed_compile_sends_the_compiler_output(client: Client) -> None:
    async with client.ws_connect("/api/v2/connect") as ws:
        await ws.send_json({"type": "init", "language": "c", "version": "*", "files": [{"content": "int main( {"}]})
        received = [m for m in await messages_until_close(ws) if m["type"] != "runtime"]
    assert received[0] == {"type": "stage", "stage": "compile"}
    assert received[1]["type"] == "data" and "error" in received[1]["data"]
    assert received[2] == {"type": "exit", "stage": "compile", "code": None, "signal": None}
    assert len(received) == 3 and ws.close_code == 4999


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([{"type": "data", "stream": "stdin", "data": "x"}], 4003),
        ([{"type": "signal", "signal": "SIGKILL"}], 4003),
        ([{"type": "init", **python("input()")}, {"type": "init", **python("1")}], 4000),
        ([{"type": "init", **python("input()")}, {"type": "data", "stream": "stdout", "data": "x"}], 4004),
        ([{"type": "init", **python("input()")}, {"type": "signal", "signal": "SIGNOPE"}], 4005),
    ],
)
async def test_socket_close_codes(client: Client, messages: list[dict[str, Any]], code: int) -> None:
    async with client.ws_connect("/api/v2/connect") as ws:
        for message in messages:
            await ws.send_json(message)
        await messages_until_close(ws)
    assert ws.close_code == code


async def test_socket_reports_errors_then_closes_4002(client: Client) -> None:
    async with client.ws_connect("/api/v2/connect") as ws:
        await ws.send_json({"type": "init", "language": "no-such-lang", "version": "*", "files": [{"content": "x"}]})
        received = await messages_until_close(ws)
    assert received == [{"type": "error", "message": "no-such-lang-* runtime is unknown"}]
    assert ws.close_code == 4002


async def test_socket_without_init_closes_4001(client: Client) -> None:
    async with client.ws_connect("/api/v2/connect") as ws:
        assert await messages_until_close(ws) == []
    assert ws.close_code == 4001


async def test_socket_refuses_other_origins(client: Client) -> None:
    response = await client.get(
        "/api/v2/connect",
        headers={"Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade"},
    )
    assert response.status == 403


async def test_sockets_per_address_are_bounded(app_client: AppClientFactory) -> None:
    client = await app_client(ws_max_connections_per_ip=1)
    async with client.ws_connect("/api/v2/connect"):
        response = await client.get("/api/v2/connect", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        assert response.status == 429


async def test_file_names_cannot_escape_the_work_dir(client: Client) -> None:
    files = [{"name": "main.py", "content": "print(1)"}, {"name": "../../etc/cron.d/x", "content": "x"}]
    status, answer = await execute(client, {"language": "python", "version": "*", "files": files})
    assert status == 400 and "../../etc/cron.d/x" in answer["message"]


@pytest.mark.redis
async def test_execute_through_the_redis_queue(app_client: AppClientFactory, redis_url: str) -> None:
    # Output events cross Redis to the instance that follows the job: `output` is still interleaved.
    client = await app_client(redis_url=redis_url)
    code = "import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr)"
    status, result = await execute(client, python(code))
    assert status == 200 and result["run"]["stdout"] == "out\n" and result["run"]["stderr"] == "err\n"
    assert sorted(result["run"]["output"].splitlines()) == ["err", "out"]


async def test_socket_init_draws_from_the_submit_bucket(app_client: AppClientFactory) -> None:
    client = await app_client(rate_limit_requests=1, rate_limit_burst=1)
    for expected in (4999, 4002):
        async with client.ws_connect("/api/v2/connect") as ws:
            await ws.send_json({"type": "init", **python("print(1)")})
            received = await messages_until_close(ws)
        assert ws.close_code == expected
    assert received[0]["type"] == "error" and "rate limit" in received[0]["message"].lower()
    assert (await (await client.get("/queue/status")).json())["totalRateLimited"] == 1


# -- the boundary: hostile versions (issue 22) ------------------------------------------------------------------

# node-semver's patterns backtrack on this: 325 bytes froze the server for 10 s, doubling every ~50 characters.
BACKTRACKING_VERSION = ">" + " " * 300 + "a"


async def test_a_backtracking_version_is_unknown_without_freezing_the_server(client: Client) -> None:
    (status, answer), stall = await while_healthy(client, execute(client, python("1", version=BACKTRACKING_VERSION)))
    assert status == 400 and answer["message"].endswith("runtime is unknown")
    assert stall < STALL_BOUND_S


async def test_a_backtracking_version_in_a_socket_init_is_unknown_without_freezing(client: Client) -> None:
    async def attack() -> list[dict[str, Any]]:
        async with client.ws_connect("/api/v2/connect") as ws:
            # Not the same text as above: node-semver caches what it parsed.
            await ws.send_json({"type": "init", **python("1", version=BACKTRACKING_VERSION.replace("a", "b"))})
            return await messages_until_close(ws)

    received, stall = await while_healthy(client, attack())
    assert [m["type"] for m in received] == ["error"] and received[0]["message"].endswith("runtime is unknown")
    assert stall < STALL_BOUND_S


@pytest.mark.parametrize(
    ("wanted", "canonical"),
    [
        ("*", "*"),
        ("3.x", "3.x"),
        (">= 3  < 4", ">=3 <4"),
        ("3.10 - 3.12", "3.10 - 3.12"),
        ("3 ||  ^4.1.0-rc.1+b", "3 || ^4.1.0-rc.1+b"),
        ("~>3.1", "~>3.1"),
        ("latest", None),
        ("3.11.0" + " " * 60, None),
        (BACKTRACKING_VERSION, None),
    ],
)
def test_version_ranges_are_checked_before_node_semver_sees_them(wanted: str, canonical: str | None) -> None:
    assert semver_range(wanted) == canonical


async def test_an_invalid_version_logs_no_traceback_and_echoes_a_bounded_message(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for version in ("not a version", "1" * 1_000_000):
        status, answer = await execute(client, python("1", version=version))
        assert status == 400 and len(answer["message"]) < 200
    assert not [record for record in caplog.records if record.exc_info]
    assert sum(len(record.getMessage()) for record in caplog.records) < 100_000


@pytest.mark.parametrize("signal", [["SIGKILL"], {"name": "SIGKILL"}, 9, None])
async def test_a_signal_that_is_not_a_name_closes_4005_without_a_traceback(
    client: Client, signal: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with client.ws_connect("/api/v2/connect") as ws:
        await ws.send_json({"type": "init", **python("input()")})
        await ws.send_json({"type": "signal", "signal": signal})
        await messages_until_close(ws)
    assert ws.close_code == 4005
    assert not [record for record in caplog.records if record.exc_info]


async def test_piston_sockets_and_hub_sockets_share_one_cap_per_address(app_client: AppClientFactory) -> None:
    client = await app_client(ws_max_connections_per_ip=2)
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
    async with client.ws_connect("/ws"), client.ws_connect("/api/v2/connect"):
        assert (await client.get("/api/v2/connect", headers=upgrade)).status == 429
        assert (await client.get("/ws", headers=upgrade)).status == 429
    async with client.ws_connect("/api/v2/connect"), client.ws_connect("/api/v2/connect"):
        assert (await client.get("/ws", headers=upgrade)).status == 429
    async with client.ws_connect("/ws"), client.ws_connect("/ws"):
        pass  # every socket closed gave its place back


async def test_a_piston_socket_has_the_hubs_message_budget(app_client: AppClientFactory) -> None:
    client = await app_client(ws_messages_per_second=1, ws_message_burst=3)
    async with client.ws_connect("/api/v2/connect") as ws:
        await ws.send_json({"type": "init", **python("import time\ntime.sleep(30)")})
        for _ in range(50):
            await ws.send_json({"type": "signal", "signal": "SIGCHLD"})  # harmless: only the budget can close it
        received = await messages_until_close(ws)
    assert ws.close_code == 1008
    errors = [m for m in received if m["type"] == "error"]
    assert len(errors) == 1 and "Too many messages" in errors[0]["message"]


@pytest.mark.parametrize("path", ["/api/v2/execute/", "/API/V2/Execute", "/Api/v2/EXECUTE/"])
async def test_routes_match_as_expresss_do_and_draw_the_same_tokens(app_client: Any, path: str) -> None:
    # Piston's Express router takes any case and a trailing slash; so do we, and such a path is a submission too
    # (a path the rate limiter did not recognise would have run for free).
    client = await app_client(rate_limit_requests=1, rate_limit_burst=1)
    first = await client.post(path, json=python("print('any case')"))
    assert first.status == 200 and (await first.json())["run"]["stdout"] == "any case\n"
    second = await client.post(path, json=python("print(2)"))
    assert second.status == 429
    runtimes = await client.get("/API/v2/Runtimes/")
    assert runtimes.status == 200 and any(r["language"] == "python" for r in await runtimes.json())
