"""The pre-started JVM of warm java sandboxes (sandbox/helper/Preload.java): a job it runs (a build's files, no compile
stage) ends as a cold `javac` then `java -cp . Main` of the same job does, and only a job it was started for (the same
heap flag and environment) takes it."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.judging.executor import Judge
from server.queue.jobs import ExecutionResult, Job, Limits, SourceFile
from server.sandbox import command
from server.sandbox.languages import load_languages
from server.sandbox.spec import HELPER_DIR, PRELOADS, RunSpec, Specs, preload_built
from tests.conftest import make_settings, scaled_ms
from tests.test_pool import run, until
from tests.test_preload_node import preloaded

pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.skipif(shutil.which("javac") is None, reason="java needs a JDK"),
    pytest.mark.skipif(not preload_built("java"), reason="the launcher is built by `make helper` (javac 17 or 18)"),
]

# What a program can see of how the JVM started it, except what differs between any two runs (pids, times, the
# descriptor numbers the JVM opened). The cmdline line names the launcher (what stays visible).
PORTRAIT = r"""
import java.io.*;
import java.util.*;

public class Main {
    public static void main(String[] args) throws Exception {
        System.out.println("args " + Arrays.toString(args));
        TreeMap<Object, Object> properties = new TreeMap<>(System.getProperties());
        properties.forEach((key, value) -> System.out.println("property " + key + "=" + value));
        System.getenv().entrySet().stream().sorted(Map.Entry.comparingByKey())
            .forEach(e -> System.out.println("env " + e));
        Thread.getAllStackTraces().keySet().stream().map(t -> t.getName() + " " + t.isDaemon() + " " + t.getPriority())
            .sorted().forEach(t -> System.out.println("thread " + t));
        Thread main = Thread.currentThread();
        System.out.println("main " + main.getId() + " " + main.getName() + " " + main.getThreadGroup().getName() + " "
            + main.getContextClassLoader() + " " + Main.class.getClassLoader() + " " + Main.class.getModule());
        System.out.println("stack " + Arrays.toString(main.getStackTrace()));
        StackWalker.getInstance().forEach(frame -> System.out.println("walk " + frame));
        Runtime runtime = Runtime.getRuntime();
        System.out.println("heap " + runtime.maxMemory() + " " + runtime.availableProcessors());
        System.out.println("files " + Arrays.toString(new File(".").list()) + " " + new File("/tmp").list().length);
        System.out.println("streams " + System.in.available() + " " + System.console());
        System.out.println("input " + new BufferedReader(new InputStreamReader(System.in)).readLine());
        System.err.println("to stderr");
        try (FileInputStream in = new FileInputStream("/proc/self/cmdline")) {
            System.out.println("cmdline " + new String(in.readAllBytes()).replace('\0', ' '));
        }
        System.exit(3);
    }
}
"""


def main(
    body: str, *, decl: str = "public class Main", members: str = "", signature: str = "public static void main"
) -> str:
    """A Main.java whose main (of that signature) is `body`."""
    return f"{decl} {{\n{members}  {signature}(String[] a) throws Exception {{\n{body}  }}\n}}\n"


# Each a job's files (the first is the entry point), its stdin and its args.
ENDINGS: dict[str, tuple[dict[str, str], str, list[str]]] = {
    "hello": ({"Main.java": main('    System.out.println("Hello, world!");\n')}, "", []),
    "args and stdin": (
        {
            "Main.java": main(
                "    java.util.Scanner in = new java.util.Scanner(System.in);\n    long sum = 0;\n"
                "    while (in.hasNextLong()) sum += in.nextLong();\n"
                '    System.out.println(String.join("|", a) + " " + sum);\n'
            )
        },
        "1 2\n39\n",
        ["a b", "", "é"],
    ),
    "System.exit": ({"Main.java": main('    System.out.println("bye");\n    System.exit(42);\n')}, "", []),
    "uncaught exception": (
        {
            "Main.java": (
                'public class Main {\n  static void f() {\n    throw new RuntimeException("boom");\n  }\n'
                "  public static void main(String[] a) {\n    System.out.println(1);\n    f();\n  }\n}\n"
            )
        },
        "",
        [],
    ),
    "causes, suppressed and a printed trace": (
        {
            "Main.java": (
                'public class Main {\n  static void f() throws Exception { throw new Exception("inner"); }\n'
                '  public static void main(String[] a) {\n    new Exception("printed").printStackTrace();\n'
                '    try { f(); } catch (Exception e) {\n      RuntimeException r = new RuntimeException("outer", e);\n'
                '      r.addSuppressed(new IllegalStateException("also"));\n      throw r;\n    }\n  }\n}\n'
            )
        },
        "",
        [],
    ),
    "static initializer": (
        {"Main.java": main("", members='  static { if (true) throw new RuntimeException("init"); }\n')},
        "",
        [],
    ),
    "stack overflow": (
        {"Main.java": main("    f(0);\n", members="  static int f(int n) { return f(n + 1) + 1; }\n")},
        "",
        [],
    ),
    "a class in a package, by another name": (
        {
            "app/Entry.java": (
                "package app;\n"
                + main(
                    '    System.out.println(Hello.class.getName() + " " + System.getProperty("sun.java.command"));\n'
                    '    throw new Exception("from a package");\n',
                    decl="public class Hello",
                )
            ),
        },
        "",
        ["x"],
    ),
    "a class that is not public": (
        {"Main.java": main('    System.out.println("hidden");\n', decl="class Main")},
        "",
        [],
    ),
    "no main": ({"Main.java": main("", signature="public static void run")}, "", []),
    "main not static": ({"Main.java": main("", signature="public void main")}, "", []),
    "main not void": ({"Main.java": main("    return 0;\n", signature="public static int main")}, "", []),
    "a thread outlives main": (
        {
            "Main.java": main(
                "    new Thread(() -> {\n      try { Thread.sleep(100); } catch (InterruptedException e) {}\n"
                '      System.out.println("thread");\n    }).start();\n    System.out.println("main ends");\n'
            )
        },
        "",
        [],
    ),
    # The JVM's identity hash codes come from a sequence of each thread's: the main thread's must be as far along.
    "identity hash codes, default toString, identity-keyed maps": (
        {
            "Main.java": main(
                '    System.out.println(new Object() + " " + new int[0] + " " + h);\n'
                "    java.util.Map<Color, Integer> colors = new java.util.HashMap<>();\n"
                "    for (Color c : Color.values()) colors.put(c, c.ordinal());\n"
                "    java.util.List<Integer> list = new java.util.ArrayList<>(java.util.List.of(3, 1, 2));\n"
                "    list.sort((x, y) -> x - y);\n"
                "    java.util.Set<Object> set = new java.util.HashSet<>();\n"
                "    for (int i = 0; i < 8; i++) set.add(new int[] {i});\n"
                "    StringBuilder order = new StringBuilder();\n"
                "    for (Object o : set) order.append(((int[]) o)[0]);\n"
                '    System.out.println(colors + " " + list + " " + order + " " + Thread.currentThread());\n',
                members=(
                    "  enum Color { RED, GREEN, BLUE, CYAN, PINK, GREY }\n  static int h = new Object().hashCode();\n"
                ),
            )
        },
        "",
        [],
    ),
    "output without a newline, unflushed": (
        {"Main.java": main('    System.out.print("no newline");\n    System.err.print("err");\n')},
        "",
        [],
    ),
}

FIELDS = ("stdout", "stderr", "exit_code", "signal", "reason")


def job(files: dict[str, str], stdin: str = "", **kwargs: Any) -> Job:
    sources = [SourceFile(name, text) for name, text in files.items()]
    return Job(language="java", code="", files=sources, stdin=stdin, **kwargs)


@pytest.fixture(scope="module")
def cold() -> Iterator[Judge]:
    """Every job starts cold, `java -cp . Main` in a fresh sandbox, its build (`javac`'s) from the build cache as the
    warm one's: what differs is only the pre-started JVM."""
    with tempfile.TemporaryDirectory(prefix="conveyor-cache-") as cache:
        settings = make_settings(warm_pool=0, cache_dir=cache, cache_max_mb=64)
        sandbox = asyncio.run(Judge.create(settings, languages=("java",)))
        yield sandbox
        asyncio.run(sandbox.close())


@pytest.fixture(scope="module")
def warm() -> Iterator[Judge]:
    """A pool of java sandboxes, each with a JVM started in it, and the build cache on: a job's build reaches its
    sandbox as files, with no compile stage."""
    with tempfile.TemporaryDirectory(prefix="conveyor-cache-") as cache:
        settings = make_settings(warm_pool=2, cache_dir=cache, cache_max_mb=64)
        sandbox = asyncio.run(Judge.create(settings, languages=("java",)))
        yield sandbox
        asyncio.run(sandbox.close())


async def warm_run(warm: Judge, job: Job) -> ExecutionResult:
    """The job in a warm sandbox, its build from the build cache (as a user's second run of the same program): the
    job once, for its build and the demand for java, then again once a java sandbox is ready."""
    assert warm.sandbox.pool is not None
    status = warm.sandbox.pool.stats
    await run(warm, job)
    await until(lambda: status()["languages"].get("java", {}).get("ready", 0) > 0, timeout=30)
    hits = status()["hits"]
    result = await run(warm, job)
    assert status()["hits"] == hits + 1, "the job's build or run did not come from the cache and a warm sandbox"
    assert result.compile_cached, result
    return result


async def pre_started_run(warm: Judge, job: Job, sent: list[tuple[RunSpec, bytes]]) -> ExecutionResult:
    """The job in a warm sandbox, by its pre-started JVM."""
    result = await warm_run(warm, job)
    assert sent and preloaded(sent[-1]), "the pre-started JVM did not run the job"
    return result


async def test_a_pre_started_jvm_is_seen_as_java_main(
    warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]]
) -> None:
    """Arguments, system properties (java.class.path "."), environment, threads, the main thread, its stack, class
    loaders, heap, files, input, output and exit code as a cold start; only /proc/self/cmdline shows it."""
    portrait = job({"Main.java": PORTRAIT}, "typed\n", args=["a b", "c"])
    want = await run(cold, portrait)
    got = await pre_started_run(warm, portrait, messages)
    assert want.exit_code == 3 and "input typed" in want.stdout and "property java.class.path=." in want.stdout, want
    *want_lines, want_cmdline = want.stdout.splitlines()
    *got_lines, got_cmdline = got.stdout.splitlines()
    assert got_lines == want_lines
    assert (got.stderr, got.exit_code, got.reason) == (want.stderr, 3, None)
    assert want_cmdline.endswith(" -cp . Main a b c ") and "conveyor.preload.Preload" in got_cmdline, got_cmdline


@pytest.mark.parametrize("name", ENDINGS)
async def test_a_pre_started_jvm_ends_as_java_main(
    warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]], name: str
) -> None:
    """Output, uncaught exceptions (their traces without the launcher's frames), the launcher's refusals, exit codes,
    args and stdin as a cold start."""
    files, stdin, args = ENDINGS[name]
    want = await run(cold, job(files, stdin, args=args))
    got = await pre_started_run(warm, job(files, stdin, args=args), messages)
    assert [getattr(got, f) for f in FIELDS] == [getattr(want, f) for f in FIELDS]


# Each a program, its wall time (ms) and why it ends.
LIMITS = {
    "timeout": ("public class Main { public static void main(String[] a) { for (;;) {} } }\n", 1000, "timeout"),
    "heap out of memory": (
        "import java.util.*;\npublic class Main { public static void main(String[] a) {\n"
        "  List<long[]> keep = new ArrayList<>();\n  for (;;) keep.add(new long[1 << 20]);\n} }\n",
        scaled_ms(10_000),
        "memory_limit",
    ),
}


@pytest.mark.parametrize("name", LIMITS)
async def test_a_pre_started_jvm_meets_the_jobs_limits(
    warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]], name: str
) -> None:
    """Its wall time and heap are the job's: a program past them ends for the same reason as a cold one (an
    OutOfMemoryError, with the same trace, is languages.toml's `out_of_memory`)."""
    code, timeout_ms, reason = LIMITS[name]
    spinning = job({"Main.java": code}, timeout_ms=timeout_ms)
    want = await run(cold, spinning)
    got = await pre_started_run(warm, spinning, messages)
    assert (got.reason, got.signal, got.exit_code) == (want.reason, want.signal, want.exit_code), (got, want)
    assert got.reason == reason, got
    if reason == "memory_limit":
        assert got.stderr == want.stderr and "java.lang.OutOfMemoryError" in got.stderr, (got, want)


async def test_only_a_job_with_the_default_heap_takes_the_pre_started_jvm(
    warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]]
) -> None:
    """A memory limit of its own changes the job's heap flag (half its memory): the driver then runs `java` itself,
    in the same warm sandbox, so the heap limit is the job's either way."""
    heap = {"Main.java": main("    System.out.println(Runtime.getRuntime().maxMemory() >> 20);\n")}
    limited = job(heap, limits=Limits(memory_mb=96))
    want = await run(cold, limited)
    got = await warm_run(warm, limited)
    assert messages and not preloaded(messages[-1])
    assert (got.stdout, got.exit_code) == (want.stdout, 0), (got, want)
    default = await pre_started_run(warm, job(heap), messages)
    assert default.stdout != got.stdout and default.exit_code == 0, default


async def test_post_run_with_stdin_through_a_pre_started_jvm(
    aiohttp_client: Any, warm: Judge, cold: Judge, messages: list[tuple[RunSpec, bytes]]
) -> None:
    """The user's path: POST /run with code, stdin and args gets the same answer warm and cold."""
    code = (
        "import java.io.*;\npublic class Main {\n  public static void main(String[] a) throws IOException {\n"
        "    BufferedReader in = new BufferedReader(new InputStreamReader(System.in));\n"
        "    for (String line; (line = in.readLine()) != null; ) {\n"
        '      if (line.equals("boom")) throw new IllegalStateException(String.join(",", a));\n'
        "      System.out.println(new StringBuilder(line).reverse());\n    }\n  }\n}\n"
    )
    body = {"language": "java", "code": code, "stdin": "one\ntwo\nboom\n", "args": ["x", "y z"]}
    answers = []
    for runner in (cold, warm):
        client = await aiohttp_client(create_app(make_settings(), runner=runner))
        if runner is warm:
            await client.post("/run", json=body)  # demand for java, and its build in the cache
            await until(lambda: warm.pool_status()["languages"].get("java", {}).get("ready", 0) > 0, timeout=30)
        async with client.post("/run", json=body) as resp:
            assert resp.status == 200
            answers.append({k: v for k, v in (await resp.json()).items() if k in ("stdout", "stderr", "exitCode")})
    assert messages and preloaded(messages[-1])
    assert answers[1] == answers[0] and answers[0]["exitCode"] == 1, answers
    assert "IllegalStateException: x,y z" in answers[0]["stderr"], answers


async def test_a_new_programs_build_starts_cold_and_its_run_takes_the_pre_started_jvm(
    warm: Judge, messages: list[tuple[RunSpec, bytes]]
) -> None:
    """A program not in the build cache: javac would discard a warm sandbox's JVM, so the build starts cold (no take,
    no miss) and the run, the only take, is served by a pre-started JVM."""
    assert warm.sandbox.pool is not None
    status = warm.sandbox.pool.stats
    await run(warm, job({"Main.java": main("System.out.println(1);")}))  # demand for java
    await until(lambda: status()["languages"].get("java", {}).get("ready", 0) > 0, timeout=30)
    before, sent = status(), len(messages)
    result = await run(warm, job({"Main.java": main(f'System.out.println("{secrets.token_hex(8)}");')}))
    after = status()
    assert result.exit_code == 0 and not result.compile_cached, result
    assert (after["hits"], after["misses"]) == (before["hits"] + 1, before["misses"]), (before, after)
    assert len(messages) == sent + 1 and preloaded(messages[-1]), "the run did not take the pre-started JVM"


def test_the_pre_started_jvm_has_the_run_commands_flags() -> None:
    """Java's preload is its run command's java with the same flags, the launcher on the boot class path (so the
    class path stays "."), and it stands for the run command's `sh -c SCRIPT`."""
    java = load_languages()["java"]
    assert java.preload is not None and java.preload_runs == 3
    run = java.run_argv([], heap_mb=64)
    script = run[2]
    flags = script[script.index("exec java ") + len("exec java ") : script.index(" -cp . ")].split()
    preload = [part.replace("{heap_mb}", "64") for part in java.preload]
    boot = f"-Xbootclasspath/a:{command.PRELOAD_FILE}"
    assert preload == ["java", *flags, boot, "-cp", ".", "conveyor.preload.Preload", command.PRELOAD_FILE], preload


def test_without_the_built_launcher_java_has_no_pre_started_jvm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make helper` builds the launcher only where javac and cc are: without it no java sandbox binds or starts it."""
    java = load_languages()["java"]
    settings = make_settings()
    built = Specs(settings, backend="bwrap", layers={}, memory_mb=256).warm(java)
    assert built.preload is not None and built.preload_runs == tuple(
        java.run_argv([], heap_mb=settings.memory_limit_mb // 2)[:3]
    )
    monkeypatch.setitem(PRELOADS, "java", tmp_path / "never-built")
    missing = Specs(settings, backend="bwrap", layers={}, memory_mb=256).warm(java)
    assert missing.preload is None and missing.preload_runs == ()
    half_built = tmp_path / "half-built"  # an interrupted `make helper`: the directory without the native half
    shutil.copytree(HELPER_DIR / "java", half_built)
    (half_built / "libconveyor-preload.so").unlink()
    monkeypatch.setitem(PRELOADS, "java", half_built)
    assert Specs(settings, backend="bwrap", layers={}, memory_mb=256).warm(java).preload is None


def test_a_launcher_built_for_another_jdk_than_the_sandboxs_java_is_not_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built by one JDK's javac, run by the `java` another JDK provides (a switched alternative): JDK 19 dropped the
    field the launcher reads and JDK 24 warns on System.load, so no JVM is started ahead for it."""
    java = load_languages()["java"]
    other = tmp_path / "java"
    shutil.copytree(HELPER_DIR / "java", other)
    (other / "jdk").write_text("/usr/lib/jvm/some-other-jdk\n")
    monkeypatch.setitem(PRELOADS, "java", other)
    assert Specs(make_settings(), backend="bwrap", layers={}, memory_mb=256).warm(java).preload is None
