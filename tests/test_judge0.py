"""Judge0 CE 1.13.1 compat (`/judge0`): the official judge0 Python SDK, Judge0's statuses, fields, base64 and errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import judge0
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application, Request
from judge0 import LanguageAlias, Status

from server.compat.judge0.attributes import FIELDS, ruby_decode64, ruby_encode64
from server.keys import QUEUE, SETTINGS
from tests.boundary import STALL_BOUND_S, while_healthy
from tests.conftest import AppClientFactory, keys_file

Client = TestClient[Request, Application]
ADMIN_KEY, USER_KEY = "admin-secret-key", "user-secret-key"


def sdk(client: Client, **headers: str) -> judge0.Client:
    """The SDK's client on our /judge0 (its constructor reads /languages and /config_info)."""
    return judge0.Client(str(client.make_url("/judge0")), headers=dict(headers) or None)


async def in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """The SDK is synchronous (httpx): run it off the loop the test server runs on."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def submit(client: Client, body: dict[str, Any], query: str = "?wait=true") -> tuple[int, Any]:
    response = await client.post(f"/judge0/submissions{query}", json=body)
    return response.status, await response.json()


# -- the official SDK ------------------------------------------------------------------------------------------


async def test_sdk_resolves_its_language_table_and_config(client: Client) -> None:
    def check(base: judge0.Client) -> None:
        assert base.version == "1.13.1"
        for alias in (LanguageAlias.PYTHON, LanguageAlias.C, LanguageAlias.CPP, LanguageAlias.JAVA):
            assert base.is_language_supported(alias), alias
        assert not base.is_language_supported(LanguageAlias.SWIFT)
        assert base.config.max_submission_batch_size == 20

    await in_thread(lambda: check(sdk(client)))


async def test_sdk_runs_a_program(client: Client) -> None:
    def run() -> judge0.Submission:
        return judge0.run(client=sdk(client), source_code="print(input()[::-1])", stdin="abc", language=71)

    submission = await in_thread(run)
    assert submission.status == Status.ACCEPTED
    assert submission.stdout == "cba\n" and submission.stderr is None
    assert submission.exit_code == 0 and submission.wall_time is not None


async def test_sdk_test_cases_and_batches(client: Client) -> None:
    # Several test cases become several submissions, created with one batch request and polled with batch reads.
    def run() -> list[judge0.Submission]:
        cases = [("2", "4"), ("3", "9"), ("4", "15")]
        code = "n = int(input())\nprint(n * n)"
        submissions: list[judge0.Submission] = judge0.run(
            client=sdk(client), source_code=code, language=71, test_cases=cases
        )
        return submissions

    submissions = await in_thread(run)
    assert [s.status for s in submissions] == [Status.ACCEPTED, Status.ACCEPTED, Status.WRONG_ANSWER]
    assert [s.stdout for s in submissions] == ["4\n", "9\n", "16\n"]


async def test_sdk_sees_compile_errors_and_runtime_errors(client: Client) -> None:
    def run() -> list[judge0.Submission]:
        base = sdk(client)
        programs = [
            ("int main( {", LanguageAlias.C),
            ("int main() { volatile int *p = 0; return *p; }", LanguageAlias.C),
            ("#include <stdlib.h>\nint main() { abort(); }", LanguageAlias.CPP),
            ("#include <signal.h>\nint main() { raise(SIGFPE); }", LanguageAlias.C),
            ("raise SystemExit(3)", LanguageAlias.PYTHON),
        ]
        return [judge0.run(client=base, source_code=code, language=language) for code, language in programs]

    ce, segv, abrt, fpe, nzec = await in_thread(run)
    assert ce.status == Status.COMPILATION_ERROR and "error" in (ce.compile_output or "")
    assert ce.stdout is None and ce.time is None
    assert (segv.status, segv.exit_signal) == (Status.RUNTIME_ERROR_SIGSEGV, 11)
    assert (abrt.status, abrt.exit_signal) == (Status.RUNTIME_ERROR_SIGABRT, 6)
    assert (fpe.status, fpe.exit_signal) == (Status.RUNTIME_ERROR_SIGFPE, 8)
    assert (nzec.status, nzec.exit_code, nzec.exit_signal) == (Status.RUNTIME_ERROR_NZEC, 3, None)


async def test_api_key_in_x_auth_token(app_client: AppClientFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        "".join(
            f'[[keys]]\nname = "{name}"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\nadmin = {admin}\n'
            for name, key, admin in (("admin", ADMIN_KEY, "true"), ("user", USER_KEY, "false"))
        )
    )
    client = await app_client(api_keys_file=str(keys))
    submission = await in_thread(
        lambda: judge0.run(client=sdk(client, **{"X-Auth-Token": USER_KEY}), source_code="print(1)", language=71)
    )
    assert submission.status == Status.ACCEPTED
    token = str(submission.token)
    with pytest.raises(RuntimeError):  # the SDK's words for a 401 while it reads the languages
        await in_thread(lambda: sdk(client, **{"X-Auth-Token": "wrong-key"}))
    # Only Judge0's routes read the header; the native API keeps to Authorization: Bearer.
    assert (await client.get("/queue/status", headers={"X-Auth-Token": "wrong-key"})).status == 200
    # Deleting is the owner's or an admin's: anyone else is refused before Judge0's own rules apply.
    response = await client.delete(f"/judge0/submissions/{token}")
    assert response.status == 403
    response = await client.delete(f"/judge0/submissions/{token}", headers={"X-Auth-Token": ADMIN_KEY})
    assert (response.status, await response.json()) == (400, {"error": "delete not allowed"})
    authorize = await client.post("/judge0/authorize", headers={"X-Auth-Token": ADMIN_KEY})
    assert authorize.status == 200
    assert (await client.post("/judge0/authorize", headers={"X-Auth-Token": USER_KEY})).status == 403
    # The user's own submissions, newest first; an anonymous caller has none.
    listed = await (await client.get("/judge0/submissions", headers={"X-Auth-Token": USER_KEY})).json()
    assert [s["token"] for s in listed["submissions"]] == [token]
    assert listed["meta"]["total_count"] == 1
    assert (await (await client.get("/judge0/submissions")).json())["meta"]["total_count"] == 0


# -- submissions over plain HTTP -------------------------------------------------------------------------------


async def test_create_answers_a_token_and_the_job_is_readable(client: Client) -> None:
    status, created = await submit(client, {"source_code": "print(1)", "language_id": 71}, query="")
    assert status == 201 and list(created) == ["token"]
    for _ in range(300):
        got = await (await client.get(f"/judge0/submissions/{created['token']}")).json()
        if got["status"]["id"] > 2:
            break
        await asyncio.sleep(0.05)
    assert list(got) == ["stdout", "time", "memory", "stderr", "token", "compile_output", "message", "status"]
    assert got["stdout"] == "1\n" and got["status"] == {"id": 3, "description": "Accepted"}


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"language_id": 71}, {"source_code": ["can't be blank"]}),
        ({"source_code": "x"}, {"language_id": ["can't be blank"]}),
        (
            {"source_code": {"a": 1}, "language_id": [71]},
            {"source_code": ["can't be blank"], "language_id": ["can't be blank"]},
        ),
        ({"source_code": "x", "language_id": 150000}, {"language_id": ["language with id 150000 doesn't exist"]}),
        (
            {"source_code": "x", "language_id": 71, "cpu_time_limit": 100},
            {"cpu_time_limit": ["must be less than or equal to 10.0"]},
        ),
        (
            {"source_code": "x", "language_id": 71, "memory_limit": 100},
            {"memory_limit": ["must be greater than or equal to 2048"]},
        ),
        ({"source_code": "x", "language_id": 71, "number_of_runs": 0}, {"number_of_runs": ["must be greater than 0"]}),
        ({"source_code": "x", "language_id": 71, "wall_time_limit": "soon"}, {"wall_time_limit": ["is not a number"]}),
        (
            {"source_code": "x", "language_id": 71, "enable_network": True},
            {"enable_network": ["enabling network is not allowed"]},
        ),
        (
            {"source_code": "x", "language_id": 71, "enable_per_process_and_thread_time_limit": True},
            {"enable_per_process_and_thread_time_limit": ["this option cannot be enabled"]},
        ),
        (
            {"source_code": "x", "language_id": 71, "compiler_options": "-O3"},
            {"compiler_options": ["setting compiler options is only allowed for compiled languages"]},
        ),
        (
            {"source_code": "x", "language_id": 71, "command_line_arguments": "a" * 513},
            {"command_line_arguments": ["is too long (maximum is 512 characters)"]},
        ),
    ],
)
async def test_bad_submissions_get_judge0s_422(
    client: Client, body: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    assert await submit(client, body) == (422, errors)


async def test_all_errors_are_named_at_once(client: Client) -> None:
    status, errors = await submit(client, {"language_id": 1, "stack_limit": -1})
    assert status == 422
    assert set(errors) == {"source_code", "language_id", "stack_limit"}


async def test_callback_url_is_checked(client: Client) -> None:
    status, errors = await submit(client, {"source_code": "x", "language_id": 71, "callback_url": "ftp://x"})
    assert status == 422 and list(errors) == ["callback_url"]


async def test_base64_both_ways_as_ruby_encodes(client: Client) -> None:
    code = "print('x' * 100)"
    body = {"source_code": base64.b64encode(code.encode()).decode(), "language_id": 71}
    status, got = await submit(client, body, query="?wait=true&base64_encoded=true&fields=stdout,source_code")
    assert status == 201
    lines = got["stdout"].split("\n")
    assert lines[-1] == "" and [len(line) for line in lines] == [60, 60, 16, 0]
    assert got["stdout"] == ruby_encode64(b"x" * 100 + b"\n")
    assert ruby_decode64(got["source_code"]) == code.encode()


def test_ruby_base64_helpers() -> None:
    assert ruby_encode64(b"") == "" and ruby_encode64(b"hi") == "aGk=\n"
    assert ruby_encode64(bytes(45)).count("\n") == 1 and ruby_encode64(bytes(46)).count("\n") == 2
    assert ruby_decode64("aGk") == b"hi" and ruby_decode64("aG\nk=\n") == b"hi" and ruby_decode64("a") == b""


async def test_fields(client: Client) -> None:
    _, got = await submit(
        client, {"source_code": "print(1)", "language_id": 71}, query="?wait=true&fields=status_id,stdout"
    )
    assert got == {"stdout": "1\n", "status_id": 3}
    _, everything = await submit(client, {"source_code": "print(1)", "language_id": 71}, query="?wait=true&fields=*")
    assert tuple(everything) == FIELDS
    assert everything["language"] == {"id": 71, "name": everything["language"]["name"]}
    assert everything["wall_time_limit"] == "5.0" and everything["number_of_runs"] == 1
    status, error = await submit(client, {"source_code": "1", "language_id": 71}, query="?fields=stdout,nope,zap")
    assert (status, error) == (400, {"error": "invalid fields: [nope, zap]"})


async def test_unknown_token_is_rails_404(client: Client) -> None:
    response = await client.get("/judge0/submissions/00000000-0000-0000-0000-000000000000")
    assert (response.status, await response.json()) == (404, {"status": 404, "error": "Not Found"})


async def test_time_limit_and_arguments_and_redirect(client: Client) -> None:
    _, slow = await submit(
        client, {"source_code": "import time\ntime.sleep(30)", "language_id": 71, "wall_time_limit": 1}
    )
    assert slow["status"]["id"] == 5
    body = {
        "source_code": "import sys\nprint(sys.argv[1:])\nprint('err', file=sys.stderr)",
        "language_id": 71,
        "command_line_arguments": "a 'b c' $(rm -rf /)",
        "redirect_stderr_to_stdout": True,
    }
    _, got = await submit(client, body)
    assert got["stdout"] == "['a', 'b c', '(rm', '-rf', '/)']\nerr\n" and got["stderr"] is None


async def test_batches(client: Client) -> None:
    items = [{"source_code": "print(1)", "language_id": 71}, {"source_code": "", "language_id": 71}]
    response = await client.post("/judge0/submissions/batch", json={"submissions": items})
    answers = await response.json()
    assert response.status == 201
    assert answers[1] == {"source_code": ["can't be blank"]} and list(answers[0]) == ["token"]
    response = await client.post("/judge0/submissions/batch", json={"submissions": items[1:]})
    assert response.status == 422
    response = await client.post("/judge0/submissions/batch", json={"submissions": []})
    assert await response.json() == {"error": "there should be at least one submission in a batch"}
    response = await client.post("/judge0/submissions/batch", json={"submissions": items * 11})
    assert await response.json() == {"error": "number of submissions in a batch should be less than or equal to 20"}
    tokens = f"{answers[0]['token']},00000000-0000-0000-0000-000000000000"
    read = await (await client.get(f"/judge0/submissions/batch?tokens={tokens}&fields=token")).json()
    assert read == {"submissions": [{"token": answers[0]["token"]}, None]}


async def test_batch_items_draw_from_the_submit_bucket(app_client: AppClientFactory) -> None:
    client = await app_client(rate_limit_requests=2, rate_limit_burst=2)
    items = [{"source_code": "print(1)", "language_id": 71}] * 3
    answers = await (await client.post("/judge0/submissions/batch", json={"submissions": items})).json()
    assert [list(a) for a in answers] == [["token"], ["token"], ["error"]]


async def test_delete_refuses_unfinished_submissions(client: Client) -> None:
    _, created = await submit(client, {"source_code": "import time\ntime.sleep(30)", "language_id": 71}, query="")
    for _ in range(300):
        response = await client.delete(f"/judge0/submissions/{created['token']}")
        if "Processing" in (await response.json())["error"]:
            break
        await asyncio.sleep(0.05)
    assert await response.json() == {"error": "submission cannot be deleted because its status is 2 (Processing)"}


async def test_callback_is_a_put_of_the_base64_submission(app_client: AppClientFactory) -> None:
    received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        received.put_nowait((request.method, await request.json()))
        return web.Response()

    receiver = web.Application()
    receiver.router.add_route("*", "/hook", receive)
    async with TestServer(receiver, host="127.0.0.1") as server:
        client = await app_client(callback_allowed_networks=("127.0.0.1/32",))
        url = str(server.make_url("/hook"))
        status, created = await submit(client, {"source_code": "print(7)", "language_id": 71, "callback_url": url}, "")
        assert status == 201
        method, body = await asyncio.wait_for(received.get(), 60)
    assert method == "PUT"
    assert body["token"] == created["token"] and body["status"] == {"id": 3, "description": "Accepted"}
    assert base64.b64decode(body["stdout"]) == b"7\n"


# -- languages, statuses and the information routes ------------------------------------------------------------


async def test_languages_statuses_and_information(client: Client) -> None:
    languages = await (await client.get("/judge0/languages")).json()
    ids = {language["id"] for language in languages}
    assert {46, 50, 54, 62, 63, 71, 73, 85} <= ids and 89 not in ids
    assert [language["name"] for language in languages] == sorted(language["name"] for language in languages)
    python = await (await client.get("/judge0/languages/71")).json()
    assert python["source_file"] == "main.py" and python["compile_cmd"] is None and python["is_archived"] is False
    c = await (await client.get("/judge0/languages/50")).json()
    assert "%s" in c["compile_cmd"]
    assert (await client.get("/judge0/languages/89")).status == 404
    all_languages = await (await client.get("/judge0/languages/all")).json()
    assert all(language["is_archived"] is False for language in all_languages)
    statuses = await (await client.get("/judge0/statuses")).json()
    assert len(statuses) == 14 and statuses[6] == {"id": 7, "description": "Runtime Error (SIGSEGV)"}
    assert (await (await client.get("/judge0/version")).text()) == "1.13.1"
    assert (await (await client.get("/judge0/about")).json())["version"] == "1.13.1"
    config = await (await client.get("/judge0/config_info")).json()
    assert config["max_memory_limit"] == 256 * 1024 and config["wall_time_limit"] == 5.0
    assert config["allow_enable_network"] is False
    workers = await (await client.get("/judge0/workers")).json()
    assert workers[0]["available"] == 2
    statistics = await (await client.get("/judge0/statistics")).json()
    assert set(statistics) == {"created_at", "cached_until", "submissions", "languages", "statuses", "database"}
    for path in ("/judge0/isolate", "/judge0/license", "/judge0/system_info", "/judge0/"):
        assert (await client.get(path)).status == 200, path


# -- what waits for the judge features' execution ---------------------------------------------------------------


async def test_number_of_runs_compiles_once_and_runs_that_often(client: Client) -> None:
    body = {
        "source_code": "print(input())",
        "language_id": 71,
        "stdin": "x",
        "expected_output": "x",
        "number_of_runs": 3,
    }
    _, got = await submit(client, body, query="?wait=true&fields=status,number_of_runs,stdout")
    assert got == {"stdout": "x\n", "number_of_runs": 3, "status": {"id": 3, "description": "Accepted"}}


async def test_executable_runs_a_base64_elf(client: Client, tmp_path: Path) -> None:
    source, binary = tmp_path / "hello.c", tmp_path / "hello"
    source.write_text('#include <stdio.h>\nint main(){puts("elf");}')
    proc = await asyncio.create_subprocess_exec("gcc", "-o", str(binary), str(source))
    assert await proc.wait() == 0
    body = {"source_code": base64.b64encode(binary.read_bytes()).decode(), "language_id": 44}
    _, got = await submit(client, body, query="?wait=true&base64_encoded=true")
    assert ruby_decode64(got["stdout"]) == b"elf\n"


async def test_additional_files_and_compiler_options(client: Client) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("helper.py", "VALUE = 42\n")
    body = {
        "source_code": "import helper\nprint(helper.VALUE)",
        "language_id": 71,
        "additional_files": base64.b64encode(archive.getvalue()).decode(),
    }
    _, got = await submit(client, body)
    assert got["stdout"] == "42\n"
    code = '#include <stdio.h>\nint main(){printf("%d\\n", VALUE);}'
    _, got = await submit(client, {"source_code": code, "language_id": 50, "compiler_options": "-DVALUE=7"})
    assert got["stdout"] == "7\n"


async def test_memory_limit_is_applied(client: Client) -> None:
    body = {"source_code": "x = bytearray(200 * 1024 * 1024)\nprint('ok')", "language_id": 71, "memory_limit": 65536}
    _, got = await submit(client, body)
    assert got["status"]["id"] != 3


# -- bounds and hostile input -----------------------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> str:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return base64.b64encode(archive.getvalue()).decode()


async def test_additional_files_cannot_unpack_past_the_code_limit(app_client: AppClientFactory) -> None:
    client = await app_client(max_code_bytes=4096)
    bomb = _zip({"zeros.bin": bytes(10 * 1024 * 1024)})  # a few KB compressed
    status, errors = await submit(client, {"source_code": "print(1)", "language_id": 71, "additional_files": bomb})
    assert (status, errors) == (422, {"additional_files": ["holds more than 4096 bytes"]})
    many = _zip({f"f{i}": b"" for i in range(100)})
    status, errors = await submit(client, {"source_code": "print(1)", "language_id": 71, "additional_files": many})
    assert status == 422 and errors["additional_files"][0].startswith("holds more than")
    status, errors = await submit(client, {"source_code": "1", "language_id": 71, "additional_files": "bm90IGEgemlw"})
    assert (status, errors) == (422, {"additional_files": ["is not a zip"]})


async def test_additional_files_cannot_escape_the_work_dir(client: Client) -> None:
    body = {"source_code": "print(1)", "language_id": 71, "additional_files": _zip({"../../etc/evil": b"x"})}
    status, errors = await submit(client, body)
    assert status == 422 and list(errors) == ["additional_files"] and ".." in errors["additional_files"][0]


async def test_what_a_submission_said_is_answered_by_another_instance(
    app_client: AppClientFactory, redis_url: str
) -> None:
    # Judge0's own fields (language_id, its limits' names, the stderr redirect) were kept in the accepting
    # instance's memory: another instance, or this one after a restart, answered them with defaults.
    one = await app_client(redis_url=redis_url)
    two = await app_client(redis_url=redis_url)
    body = {
        "source_code": "import sys\nprint('out')\nprint('err', file=sys.stderr)",
        "language_id": 71,
        "redirect_stderr_to_stdout": True,
        "stack_limit": 4000,
        "command_line_arguments": "a 'b c'",
    }
    status, got = await submit(one, body)
    assert status == 201, got
    fields = "language_id,redirect_stderr_to_stdout,stack_limit,command_line_arguments,stdout"
    answers = [
        await (await client.get(f"/judge0/submissions/{got['token']}?fields={fields}")).json() for client in (one, two)
    ]
    assert answers[0] == answers[1]
    assert answers[1]["language_id"] == 71 and answers[1]["redirect_stderr_to_stdout"] is True
    assert answers[1]["stack_limit"] == 4000
    assert answers[1]["command_line_arguments"] == "a 'b c'" and "err" in answers[1]["stdout"]


@pytest.mark.redis
async def test_submissions_through_the_redis_queue(app_client: AppClientFactory, redis_url: str) -> None:
    client = await app_client(redis_url=redis_url)
    status, got = await submit(client, {"source_code": "print(input())", "language_id": 71, "stdin": "r"})
    assert status == 201 and got["stdout"] == "r\n" and got["status"]["id"] == 3
    read = await (await client.get(f"/judge0/submissions/{got['token']}?fields=stdout")).json()
    assert read == {"stdout": "r\n"}


async def test_a_users_listing_through_the_redis_queue(
    app_client: AppClientFactory, redis_url: str, tmp_path: Path
) -> None:
    # The Redis listing reads summaries (HMGET): the owner must be among them for a user to see its own.
    client = await app_client(redis_url=redis_url, api_keys_file=keys_file(tmp_path, {"user": (USER_KEY, False)}))
    user = {"X-Auth-Token": USER_KEY}
    await client.post(
        "/judge0/submissions?wait=true", json={"source_code": "print(5)", "language_id": 71}, headers=user
    )
    await submit(client, {"source_code": "print(6)", "language_id": 71})  # anonymous: not the user's
    answer = await (await client.get("/judge0/submissions?fields=stdout,status_id", headers=user)).json()
    assert answer["submissions"] == [{"stdout": "5\n", "status_id": 3}]
    stats = await (await client.get("/judge0/statistics")).json()
    assert stats["statuses"] == [{"status": {"id": 3, "name": "Accepted"}, "count": 2}]


async def test_output_that_is_not_utf8_needs_base64(client: Client) -> None:
    # Judge0's answer when text mode cannot carry the output; the native stdoutLossy flag tells us.
    body = {"source_code": "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe')", "language_id": 71}
    status, got = await submit(client, body)
    assert status == 201 and set(got) == {"token", "error"}
    assert got["error"].startswith("some attributes for this submission cannot be converted to UTF-8")


# -- the boundary: hostile numbers, pages and bodies (issue 22) -------------------------------------------------


async def test_a_huge_language_id_is_refused_without_freezing_the_server(client: Client) -> None:
    # "1e600000" is 8 characters; as an integer, 600,000 digits: seconds of CPU on the event loop, per item.
    body = {"source_code": "print(1)", "language_id": "1e600000"}
    (status, errors), stall = await while_healthy(client, submit(client, body, query=""))
    assert (status, errors) == (422, {"language_id": ["language with id 1e600000 doesn't exist"]})
    items = {"submissions": [body, {**body, "language_id": "9" * 60 + "e999999999"}, {**body, "language_id": 1e308}]}
    response, stall_batch = await while_healthy(client, client.post("/judge0/submissions/batch", json=items))
    assert response.status == 422 and all(list(answer) == ["language_id"] for answer in await response.json())
    assert max(stall, stall_batch) < STALL_BOUND_S


@pytest.mark.parametrize(
    "name", ["cpu_time_limit", "wall_time_limit", "memory_limit", "stack_limit", "number_of_runs", "max_file_size"]
)
@pytest.mark.parametrize("value", ["1e999999999", "-1e999999999", "1" * 5000, "1" * 100_000 + "x", 1e308])
async def test_hostile_limits_are_judge0s_422(client: Client, name: str, value: Any) -> None:
    status, errors = await submit(client, {"source_code": "print(1)", "language_id": 71, name: value}, query="")
    assert status == 422 and list(errors) == [name], errors


async def test_hostile_page_numbers_are_answered(client: Client) -> None:
    for query in ("page=" + "9" * 5000, "per_page=" + "9" * 5000, "page=²", "per_page=1e600000", "page=-" + "9" * 5000):
        response = await client.get(f"/judge0/submissions?{query}")
        assert response.status in (200, 400), query[:20]
        assert isinstance(await response.json(), dict)
    meta = (await (await client.get("/judge0/submissions?page=" + "9" * 5000)).json())["meta"]
    assert meta["total_count"] == 0 and meta["next_page"] is None


async def test_wrong_x_auth_tokens_count_towards_the_lockout(
    app_client: AppClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As for Authorization: Bearer: past AUTH_FAILURE_LIMIT wrong keys, the address's keys are refused unchecked.
    client = await app_client(
        api_keys_file=keys_file(tmp_path, {"user": (USER_KEY, False)}),
        auth_failure_limit=3,
        rate_limit_window_ms=60_000,
    )
    statuses = [
        (await client.get("/judge0/about", headers={"X-Auth-Token": f"wrong-key-{n}"})).status for n in range(5)
    ]
    assert statuses == [401, 401, 401, 429, 429]
    response = await client.get("/judge0/about", headers={"X-Auth-Token": USER_KEY})
    assert response.status == 429 and "Retry-After" in response.headers  # the right key is not told apart
    assert any("failed authentications" in record.getMessage() for record in caplog.records)


async def test_listing_and_statistics_read_summaries_and_one_page(
    app_client: AppClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GET /submissions and /statistics read every retained job whole (one request: 183 MB); now the listing's
    # summaries (metadata only), then whole jobs for the one page shown, at most MAX_PER_PAGE of them.
    client = await app_client(api_keys_file=keys_file(tmp_path, {"admin": (ADMIN_KEY, True)}))
    admin = {"X-Auth-Token": ADMIN_KEY}
    for n in range(3):
        await client.post("/judge0/submissions?wait=true", json={"source_code": f"print({n})", "language_id": 71})
    queue = client.app[QUEUE]

    async def whole_jobs(limit: int = 100) -> list[Any]:
        raise AssertionError("read every retained job whole")

    monkeypatch.setattr(queue, "recent", whole_jobs)
    got: list[str] = []
    get = queue.get

    async def counting_get(job_id: str) -> Any:
        got.append(job_id)
        return await get(job_id)

    monkeypatch.setattr(queue, "get", counting_get)
    answer = await (await client.get("/judge0/submissions?per_page=2&fields=stdout", headers=admin)).json()
    assert [s["stdout"] for s in answer["submissions"]] == ["2\n", "1\n"] and len(got) == 2
    assert answer["meta"] == {"current_page": 1, "next_page": 2, "prev_page": None, "total_pages": 2, "total_count": 3}
    answer = await (await client.get("/judge0/submissions?per_page=1000000000", headers=admin)).json()
    assert answer["meta"]["total_pages"] == 1 and len(answer["submissions"]) == 3
    stats = await (await client.get("/judge0/statistics")).json()
    assert stats["statuses"] == [{"status": {"id": 3, "name": "Accepted"}, "count": 3}]
    assert len(got) == 5


async def test_statistics_tell_wrong_answers_from_summaries(client: Client) -> None:
    body = {"source_code": "print(1)", "language_id": 71, "expected_output": "2"}
    assert (await submit(client, body))[1]["status"]["id"] == 4
    stats = await (await client.get("/judge0/statistics")).json()
    assert stats["statuses"] == [{"status": {"id": 4, "name": "Wrong Answer"}, "count": 1}]


async def test_a_batch_body_is_bounded_by_the_submissions_the_caller_may_make(app_client: AppClientFactory) -> None:
    # One read token bought a 40 MB batch; now a body carries at most what the caller's submit bucket allows.
    client = await app_client(max_code_bytes=1000, max_stdin_bytes=1000, rate_limit_requests=2, rate_limit_burst=2)
    settings = client.app[SETTINGS]
    item = {"source_code": "print(1)", "language_id": 71, "stdin": "x" * 1000}
    padding = " " * (2 * settings.max_body_bytes)
    response = await client.post(
        "/judge0/submissions/batch",
        data='{"submissions": [' + ",".join([orjson.dumps(item).decode()] * 2) + "]" + padding + "}",
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    response = await client.post("/judge0/submissions/batch", json={"submissions": [item] * 2})
    assert response.status == 201


def _corrupt_zips() -> dict[str, bytes]:
    """Zips whose members cannot be read: a flipped byte in the deflated data, an encrypted member (the flag set,
    as zip -e does), an unknown compression method."""
    good = base64.b64decode(_zip({"a.txt": b"hello " * 200}))
    start = good.index(b"a.txt") + len("a.txt")
    corrupt = good[:start] + bytes(b ^ 0xFF for b in good[start : start + 8]) + good[start + 8 :]
    encrypted = bytearray(good)
    for header in (b"PK\x03\x04", b"PK\x01\x02"):
        at = good.index(header) + (6 if header == b"PK\x03\x04" else 8)
        encrypted[at] |= 1
    method = bytearray(good)
    for header in (b"PK\x03\x04", b"PK\x01\x02"):
        at = good.index(header) + (8 if header == b"PK\x03\x04" else 10)
        method[at : at + 2] = (99).to_bytes(2, "little")
    return {"corrupt": corrupt, "encrypted": bytes(encrypted), "method": bytes(method)}


@pytest.mark.parametrize("kind", ["corrupt", "encrypted", "method"])
async def test_unreadable_zip_members_are_judge0s_422(
    client: Client, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = base64.b64encode(_corrupt_zips()[kind]).decode()
    status, errors = await submit(client, {"source_code": "1", "language_id": 71, "additional_files": data})
    assert (status, errors) == (422, {"additional_files": ["is not a zip"]})
    assert not [record for record in caplog.records if record.exc_info]
