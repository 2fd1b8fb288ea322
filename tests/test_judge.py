"""Judge features through POST /run on the real sandbox: several files, per-run limits, compiler options,
verdicts, tests compiled once, binary-safe output. Every response is checked against openapi.json."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from server.keys import RUNNER
from tests.clients import Client, call

C_MAIN = '#include <stdio.h>\n#include "util.h"\nint main(void) { printf("%d\\n", twice(21)); return 0; }\n'
C_UTIL = '#include "util.h"\nint twice(int x) { return 2 * x; }\n'
C_SUM = (
    '#include <stdio.h>\nint main(void) { long a, b; if (scanf("%ld %ld", &a, &b) != 2) return 3;\n'
    'printf("%ld\\n", a + b); return 0; }\n'
)


async def run(client: Client, status: int = 200, **body: Any) -> Any:
    return await call(client, "POST", "/run", status, json=body)


async def queued_total(client: Client) -> int:
    stats = await call(client, "GET", "/queue/status", 200)
    return int(stats["totalQueued"])


async def test_c_files_compile_together(client: Client) -> None:
    files = [
        {"name": "main.c", "content": C_MAIN},
        {"name": "util.c", "content": C_UTIL},
        {"name": "util.h", "content": "int twice(int x);\n"},
    ]
    job = await run(client, language="c", files=files)
    assert (job["status"], job["stdout"]) == ("completed", "42\n"), job
    assert [f["name"] for f in job["files"]] == ["main.c", "util.c", "util.h"]


async def test_python_package_in_a_subdirectory_and_main_names_the_entry_point(client: Client) -> None:
    files = [
        {"name": "lib/__init__.py", "content": ""},
        {"name": "lib/greet.py", "content": "def hello(name):\n    return f'hello {name}'\n"},
        {"name": "app.py", "content": "import sys\nfrom lib.greet import hello\nprint(hello(sys.argv[0]))\n"},
    ]
    job = await run(client, language="python", files=files, main="app.py")
    assert job["stdout"] == "hello app.py\n", job
    assert job["files"][0]["name"] == "app.py"  # the entry point first


async def test_java_entry_point_class_comes_from_the_file_name(client: Client) -> None:
    files = [
        {"name": "Solution.java", "content": "public class Solution { public static void main(String[] a) { "
         "System.out.println(Helper.greet()); } }\n"},
        {"name": "Helper.java", "content": "class Helper { static String greet() { return \"hi from helper\"; } }\n"},
    ]  # fmt: skip
    job = await run(client, language="java", files=files)
    assert job["stdout"] == "hi from helper\n", job


async def test_base64_file_reaches_the_program_byte_for_byte(client: Client) -> None:
    data = bytes(range(256))
    files = [
        {
            "name": "main.py",
            "content": "import hashlib\nprint(hashlib.sha256(open('blob.bin','rb').read()).hexdigest())",
        },
        {"name": "blob.bin", "content": base64.b64encode(data).decode(), "encoding": "base64"},
    ]
    job = await run(client, language="python", files=files)
    import hashlib

    assert job["stdout"].strip() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../escape.py", ".."),
        ("/etc/passwd", "relative"),
        ("a/../../b", ".."),
        ("a//b", "empty"),
        ("nul\x00name", "control"),
        ("", "1 to 255"),
        ("tmp/x", "reserved"),
        (".hidden", "reserved"),
        ("x" * 300, "1 to 255"),
    ],
)
async def test_bad_file_names_are_refused_naming_the_file_and_nothing_is_queued(
    client: Client, name: str, why: str
) -> None:
    before = await queued_total(client)
    files = [{"name": "main.py", "content": "print(1)"}, {"name": name, "content": "x"}]
    error = await run(client, 400, language="python", files=files)
    assert error["field"] == "files" and error["file"] == name and why in error["message"]
    assert await queued_total(client) == before


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"files": [{"name": "a.py", "content": "1"}, {"name": "a.py", "content": "2"}]}, "files", "more than once"),
        ({"files": [{"name": "a", "content": "1"}, {"name": "a/b", "content": "2"}]}, "files", "directory"),
        ({"files": [{"name": "a.py", "content": "!!", "encoding": "base64"}]}, "files", "base64"),
        ({"files": [{"name": "a.py", "content": "x", "encoding": "rot13"}]}, "files", "utf8 or base64"),
        ({"files": []}, "files", "from 1 to"),
        ({"files": [{"name": "a.py"}]}, "files", "content"),
        ({"files": [{"name": "a.py", "content": "print(1)"}], "main": "b.py"}, "main", "not one of files"),
        ({"code": "print(1)", "files": [{"name": "a.py", "content": "1"}]}, "files", "not both"),
        ({"code": "print(1)", "main": "a.py"}, "main", "does not go with code"),
        ({"code": "print(1)", "cpuTimeLimitMs": 10**9}, "cpuTimeLimitMs", "from 1 to"),
        ({"code": "print(1)", "memoryLimitMb": 0}, "memoryLimitMb", "from 1 to"),
        ({"code": "print(1)", "compileTimeoutMs": 10**9}, "compileTimeoutMs", "from 1 to"),
        ({"code": "print(1)", "compilerOptions": ["-O3"]}, "compilerOptions", "no compile stage"),
        ({"code": "print(1)", "outputEncoding": "hex"}, "outputEncoding", "utf8 or base64"),
        ({"code": "print(1)", "tests": []}, "tests", "from 1 to"),
        ({"code": "print(1)", "tests": [{"stdin": 5}]}, "tests", "strings"),
        ({"code": "print(1)", "stdin": "x", "tests": [{"stdin": "y"}]}, "stdin", "each test"),
        ({"code": "print(1)", "expectedOutput": "1", "tests": [{}]}, "expectedOutput", "each test"),
        ({"code": "print(1)", "callbackUrl": "file:///etc/passwd"}, "callbackUrl", "http"),
    ],
)
async def test_bad_judge_fields_are_400_naming_the_field(
    client: Client, body: dict[str, Any], field: str, text: str
) -> None:
    before = await queued_total(client)
    error = await run(client, 400, language="python", **body)
    assert error["field"] == field and text in error["message"], error
    assert await queued_total(client) == before


async def test_limits_above_the_server_maximum_name_the_maximum(client: Client) -> None:
    runner = client.app[RUNNER]
    maximum = runner.sandbox.settings.memory_limit_mb  # type: ignore[attr-defined]
    error = await run(client, 400, language="python", code="print(1)", memoryLimitMb=maximum + 1)
    assert error["max"] == maximum and str(maximum) in error["message"]


async def test_files_over_the_code_limit_are_413(client: Client) -> None:
    big = "x" * 40_000
    files = [{"name": "main.py", "content": "print(1)"}, {"name": "a", "content": big}, {"name": "b", "content": big}]
    error = await run(client, 413, language="python", files=files)
    assert error["field"] == "files"


async def test_a_lower_memory_limit_is_enforced(client: Client) -> None:
    code = "x = bytearray(100 * 1024 * 1024)\nprint('allocated')"
    job = await run(client, language="python", code=code, memoryLimitMb=32)
    assert job["status"] == "failed" and job["reason"] == "memory_limit", job
    assert job["memoryLimitMb"] == 32 and job["verdict"] == "memory_limit"
    assert (await run(client, language="python", code=code))["stdout"] == "allocated\n"  # the default allows it


async def test_a_lower_cpu_limit_is_enforced(client: Client) -> None:
    job = await run(client, language="python", code="while True: pass", cpuTimeLimitMs=1000)
    assert job["status"] == "failed" and job["reason"] == "cpu_limit", job
    assert job["verdict"] == "cpu_limit"


async def test_a_lower_compile_timeout_is_enforced(client: Client) -> None:
    # Templates instantiated to a depth that keeps g++ busy for far longer than 300 ms.
    code = (
        "template<int N> struct F { static const long v = F<N-1>::v + F<N-2>::v; };\n"
        "template<> struct F<1> { static const long v = 1; };\ntemplate<> struct F<0> { static const long v = 0; };\n"
        "int main() { return (int)F<40>::v; }\n"
    )
    big = code.replace("int main", "template<int N> struct G { static const long v = F<N>::v; };\nint main")
    job = await run(client, language="cpp", code=big, compileTimeoutMs=1, compilerOptions=["-ftemplate-depth=2000"])
    assert job["reason"] == "compile_timeout" and job["verdict"] == "compile_error", job


async def test_compiler_options_reach_the_compiler(client: Client) -> None:
    code = '#include <stdio.h>\nint main(void) { printf("%d\\n", VALUE); return 0; }\n'
    job = await run(client, language="c", code=code, compilerOptions=["-DVALUE=42"])
    assert job["stdout"] == "42\n" and job["compilerOptions"] == ["-DVALUE=42"]


JAVA_HELLO = 'class Main { public static void main(String[] a) { System.out.println("hi"); } }\n'
C_HELLO = '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'


@pytest.mark.parametrize(
    ("language", "options"),
    [
        # Driver options that run a program, load a plugin or read specs/options from a file: code of the
        # submitter's own in the compile stage, outside the run's CPU limit.
        ("c", ["-wrapper", "/bin/sh,-c,while :; do :; done"]),
        ("c", ["-B./"]),
        ("c", ["-B", "."]),
        ("c", ["-specs=./evil.specs"]),
        ("c", ["-fplugin=./evil.so"]),
        ("c", ["-fplugin-arg-evil-x=1"]),
        ("c", ["@opts.txt"]),
        ("c", ["-Wl,-plugin,./evil.so"]),
        ("c", ["-Xlinker", "--plugin"]),
        ("c", ["-x", "assembler"]),
        ("c", ["-include/etc/passwd"]),
        ("c", ["-I/etc"]),
        ("c", ["-I../.."]),
        ("c", ["--param", "x=1"]),
        ("c", ["-fuse-ld=./evil"]),
        ("c", ["-fprofile-generate=/tmp/x"]),
        ("cpp", ["-wrapper", "/bin/sh"]),
        ("rust", ["-C", "linker=./evil.sh"]),
        ("rust", ["-Clinker=./evil.sh"]),
        ("rust", ["-C", "link-arg=-Wl,-plugin,x"]),
        ("rust", ["-C", "link-args=-B."]),
        ("rust", ["-Z", "unstable-options"]),
        ("rust", ["-L", "."]),
        ("rust", ["--extern", "evil=./libevil.so"]),
        ("rust", ["-C", "llvm-args=-load=./x.so"]),
        ("rust", ["-C"]),
        ("java", ["-J-Xmx4g"]),
        ("java", ["-processorpath", "."]),
        ("java", ["-processor", "Evil"]),
        ("java", ["-Xplugin:Evil"]),
        ("java", ["-cp", "/"]),
        ("java", ["-proc:full"]),
        ("java", ["@argfile"]),
    ],
)
async def test_compiler_options_that_run_code_are_refused(client: Client, language: str, options: list[str]) -> None:
    error = await run(client, 400, language=language, code="x", compilerOptions=options)
    assert error["field"] == "compilerOptions" and "not allowed" in error["message"], error
    assert error["option"].split()[0] in options


async def test_a_wrapper_cannot_spend_the_compile_stage_on_the_submitters_code(client: Client) -> None:
    # The attack as measured: 1 s CPU limit, 7.9 CPU-s spent by the wrapper while "compiling".
    spin = '/bin/sh,-c,i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done; exec "$0" "$@"'
    error = await run(client, 400, language="c", code=C_HELLO, cpuTimeLimitMs=1000, compilerOptions=["-wrapper", spin])
    assert error["field"] == "compilerOptions"


PROCESSOR = """
import javax.annotation.processing.*;
import javax.lang.model.SourceVersion;
import javax.lang.model.element.TypeElement;
import java.util.Set;
@SupportedAnnotationTypes("*")
public class Evil extends AbstractProcessor {
    @Override public SourceVersion getSupportedSourceVersion() { return SourceVersion.latestSupported(); }
    @Override public boolean process(Set<? extends TypeElement> a, RoundEnvironment r) {
        System.err.println("PROCESSOR-RAN-IN-COMPILE");
        return false;
    }
}
"""


async def test_javac_runs_no_annotation_processor_the_submission_brings(client: Client, tmp_path: Path) -> None:
    # Without any option, javac looks for processors on its class path (the work dir): a submitted class and a
    # META-INF/services entry ran the submitter's code in the compile stage.
    (tmp_path / "Evil.java").write_text(PROCESSOR)
    subprocess.run(["javac", "--release", "17", "Evil.java"], cwd=tmp_path, check=True, capture_output=True)
    files = [
        {"name": "Main.java", "content": JAVA_HELLO},
        {"name": "Evil.class", "content": base64.b64encode((tmp_path / "Evil.class").read_bytes()).decode(),
         "encoding": "base64"},
        {"name": "META-INF/services/javax.annotation.processing.Processor", "content": "Evil\n"},
    ]  # fmt: skip
    job = await run(client, language="java", files=files)
    assert job["stdout"] == "hi\n" and "PROCESSOR-RAN" not in (job["compileOutput"] or ""), job


@pytest.mark.parametrize(
    ("language", "code", "options"),
    [
        (
            "c",
            C_HELLO,
            ["-O0", "-g", "-Wall", "-Wextra", "-Wno-unused", "-std=c11", "-DN=3", "-UN", "-lm", "-pedantic"],
        ),
        ("c", C_HELLO, ["-fsanitize=undefined", "-fno-omit-frame-pointer", "-march=native", "-pthread"]),
        ("cpp", '#include <cstdio>\nint main() { std::puts("hi"); }\n', ["-std=c++20", "-O3", "-fno-exceptions"]),
        ("rust", 'fn main() { println!("hi"); }\n', ["-C", "opt-level=1", "-C", "debuginfo=0", "-A", "warnings"]),
        ("rust", 'fn main() { println!("hi"); }\n', ["-Copt-level=2", "--cfg", "feature_x", "-g"]),
        (
            "java",
            'class Main { public static void main(String[] a) { System.out.println("hi"); } }\n',
            ["-Xlint:all", "-g"],
        ),
    ],
)
async def test_ordinary_compiler_options_still_work(
    client: Client, language: str, code: str, options: list[str]
) -> None:
    job = await run(client, language=language, code=code, compilerOptions=options)
    assert job["stdout"] == "hi\n", job


@pytest.mark.parametrize(
    ("code", "expected", "verdict", "status"),
    [
        ("print('42  ')\nprint()", "42\n", "accepted", "completed"),
        ("print(41)", "42", "wrong_answer", "completed"),
        ("print(42)\nraise SystemExit(3)", "42", "runtime_error", "failed"),
        ("import time\ntime.sleep(5)", "42", "time_limit", "timeout"),
    ],
)
async def test_expected_output_gives_a_verdict(
    client: Client, code: str, expected: str, verdict: str, status: str
) -> None:
    job = await run(client, language="python", code=code, expectedOutput=expected, timeoutMs=1000)
    assert (job["verdict"], job["status"]) == (verdict, status), job


async def test_without_expected_output_a_clean_run_is_accepted(client: Client) -> None:
    assert (await run(client, language="python", code="print(1)"))["verdict"] == "accepted"


async def test_tests_compile_once_and_each_gets_its_verdict(client: Client) -> None:
    runner = client.app[RUNNER]
    builds = runner.sandbox.builds  # type: ignore[attr-defined]
    tests = [
        {"stdin": "1 2", "expectedOutput": "3"},
        {"stdin": "40 2\n", "expectedOutput": "42\n"},
        {"stdin": "1 1", "expectedOutput": "3"},
        {"stdin": "nonsense"},
    ]
    job = await run(client, language="c", code=C_SUM, tests=tests)
    assert runner.sandbox.builds == builds + 1  # type: ignore[attr-defined]
    assert job["status"] == "completed" and job["verdict"] == "wrong_answer", job
    assert [t["verdict"] for t in job["tests"]] == ["accepted", "accepted", "wrong_answer", "runtime_error"]
    assert [t["stdout"] for t in job["tests"]][:3] == ["3\n", "42\n", "2\n"]
    assert job["tests"][3]["exitCode"] == 3
    assert job["summary"] == {"passed": 2, "total": 4}
    assert job["compileTimeMs"] > 0 and all(t["timeMs"] is not None for t in job["tests"])
    # The compile's cost is reported once, each test's own run separately, the job's CPU as their sum.
    assert job["compileCpuTimeMs"] > 0 and all(t["cpuTimeMs"] is not None for t in job["tests"])
    assert job["cpuTimeMs"] == pytest.approx(sum(t["cpuTimeMs"] for t in job["tests"]), abs=1)
    assert all(t["memoryPeakBytes"] > 0 for t in job["tests"])


async def test_each_test_runs_in_a_fresh_sandbox(client: Client) -> None:
    # A test that leaves a file behind: the next test must not see it.
    code = "import os\nprint(os.path.exists('mark'))\nopen('mark', 'w').write('x')\n"
    job = await run(client, language="python", code=code, tests=[{}, {}, {}])
    assert [t["stdout"] for t in job["tests"]] == ["False\n"] * 3
    code_c = (
        '#include <stdio.h>\nint main(void){FILE*f=fopen("mark","r");puts(f?"seen":"fresh");'
        'fopen("mark","w");return 0;}'
    )
    job = await run(client, language="c", code=code_c, tests=[{}, {}])
    assert [t["stdout"] for t in job["tests"]] == ["fresh\n", "fresh\n"], job


async def test_tests_of_a_program_that_does_not_compile(client: Client) -> None:
    job = await run(client, language="c", code="int main( {", tests=[{"stdin": "1"}, {"stdin": "2"}])
    assert job["status"] == "failed" and job["reason"] == "compile_error"
    assert [t["verdict"] for t in job["tests"]] == ["compile_error", "compile_error"]
    assert job["summary"] == {"passed": 0, "total": 2}
    assert "error" in job["compileOutput"]


async def test_base64_output_is_exact_and_utf8_output_marks_replacements(client: Client) -> None:
    code = "import sys\nsys.stdout.buffer.write(b'ok\\xff\\xfe\\x00')\nsys.stderr.buffer.write(b'e\\x80')"
    job = await run(client, language="python", code=code, outputEncoding="base64")
    assert base64.b64decode(job["stdout"]) == b"ok\xff\xfe\x00"
    assert base64.b64decode(job["stderr"]) == b"e\x80"
    assert job["outputEncoding"] == "base64" and job["stdoutLossy"] is True
    job = await run(client, language="python", code=code)
    assert job["stdout"] == "ok\ufffd\ufffd\x00" and job["stdoutLossy"] is True and job["stderrLossy"] is True
    clean = await run(client, language="python", code="print('héllo')")
    assert clean["stdoutLossy"] is False


async def test_an_executable_runs_as_it_is(client: Client, tmp_path: Any) -> None:

    source, binary = tmp_path / "hello.c", tmp_path / "hello"
    source.write_text('#include <stdio.h>\nint main(int c, char **v) { printf("elf %s\\n", v[1]); return 7; }')
    proc = await asyncio.create_subprocess_exec("gcc", "-o", str(binary), str(source))
    assert await proc.wait() == 0
    files = [{"name": "prog", "content": base64.b64encode(binary.read_bytes()).decode(), "encoding": "base64"}]
    job = await run(client, language="executable", files=files, args=["arg"])
    assert (job["stdout"], job["exitCode"]) == ("elf arg\n", 7), job


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_the_websocket_streams_a_test_event_as_each_test_finishes(
    app_client: Any, backend: str, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    client = await app_client(redis_url=redis_url, worker_slots=2)
    tests = [{"stdin": "1 2", "expectedOutput": "3"}, {"stdin": "2 2", "expectedOutput": "5"}]
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "run", "language": "c", "code": C_SUM, "tests": tests, "requestId": "t"})
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            while not events or events[-1]["type"] not in ("completed", "failed", "timeout", "cancelled"):
                message = await ws.receive_json()
                if message.get("jobId"):
                    events.append(message)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "completed" and kinds.count("test") == 2
    verdicts = [(e["index"], e["verdict"], e["stdout"]) for e in events if e["type"] == "test"]
    assert verdicts == [(0, "accepted", "3\n"), (1, "wrong_answer", "4\n")]
    seqs = [e["seq"] for e in events if "seq" in e]
    assert seqs == sorted(seqs)


async def test_judge_fields_survive_the_redis_store(app_client: Any, redis_url: str) -> None:
    client = await app_client(redis_url=redis_url, worker_slots=1)
    files = [
        {"name": "main.c", "content": C_MAIN},
        {"name": "util.c", "content": C_UTIL},
        {"name": "util.h", "content": "int twice(int x);\n"},
    ]
    job = await run(
        client,
        language="c",
        files=files,
        compilerOptions=["-Wall"],
        memoryLimitMb=64,
        tests=[{"expectedOutput": "42"}, {"expectedOutput": "41"}],
    )
    assert [t["verdict"] for t in job["tests"]] == ["accepted", "wrong_answer"], job
    assert job["files"] == [{**f, "encoding": "utf8"} for f in files] and job["memoryLimitMb"] == 64


async def test_tests_are_charged_by_the_slot_time_they_book(app_client: Any) -> None:
    # 64 tests multiplied one submit token by 64 times the timeout: a token now buys SUBMIT_TOKEN_SLOT_SECONDS of a
    # worker slot, and a submission costs (tests or 1) x timeoutMs of it, at least one token.
    client = await app_client(rate_limit_requests=10, submit_token_slot_seconds=10, job_timeout_ms=5000)
    eight = {"language": "python", "code": "print(input())", "tests": [{"stdin": str(i)} for i in range(8)]}
    too_big = {**eight, "tests": [{"stdin": "1"}] * 30}  # 150 slot-seconds: 15 tokens, more than the bucket holds
    error = await run(client, 400, **too_big)
    assert error["field"] == "tests" and error["cost"] == 15 and error["capacity"] == 10, error
    remaining = []
    for _ in range(2):  # 40 slot-seconds each: 4 tokens
        resp = await client.post("/run", json=eight)
        assert resp.status == 200, await resp.text()
        remaining.append(resp.headers["X-RateLimit-Remaining"])
    assert remaining == ["6", "2"]  # the headers count every token the submission cost
    resp = await client.post("/run", json=eight)  # 4 more than the 2 left
    assert resp.status == 429 and (await resp.json())["retryAfter"] >= 1
    short = {**eight, "timeoutMs": 1000}  # 8 slot-seconds: one token
    assert (await client.post("/run", json=short)).status == 200
    # The other native doors charge the same, and a refusal keeps no token.
    batch = await call(client, "POST", "/runs", 200, json={"submissions": [too_big]})
    assert batch["runs"][0]["status"] == 400 and batch["runs"][0]["cost"] == 15
    ws = await client.ws_connect("/ws")
    await ws.receive_json()  # hello
    await ws.send_json({"type": "run", **too_big})
    assert (await ws.receive_json())["cost"] == 15
    await ws.send_json({"type": "run", **short})
    assert (await ws.receive_json())["type"] == "queued"  # the one token left was not lost to the refusals
    await ws.close()
