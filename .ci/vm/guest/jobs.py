"""Runs the issue-21 jobs through a running server's POST /run and prints one PASS or FAIL line per check.

Usage: python3 jobs.py BASE_URL [all|memory-hogs N]. Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

FORK_BOMB = """
import os, sys, time
first = os.getpid()
while True:
    try:
        os.fork()
    except OSError as exc:
        if os.getpid() == first:
            print("refused:", exc.strerror, flush=True)
            time.sleep(0.3)
            sys.exit(0)
"""

# Re-forks 0.8 CPU-s spinners two at a time: no process reaches RLIMIT_CPU, only the job-wide limit can stop it.
REFORKING_SPINNER = """
import os, time
def spin():
    start = time.process_time()
    while time.process_time() - start < 0.8:
        pass
    os._exit(0)
for round in range(20):
    children = [os.fork() for _ in range(2)]
    if 0 in children:
        spin()
    for pid in children:
        os.waitpid(pid, 0)
    print('round', round, flush=True)
"""

MEMORY_HOG = "data = b'x' * (400 << 20)\nprint(len(data))\n"

JAVA_HELLO = 'public class Main { public static void main(String[] a) { System.out.println("hello from java"); } }\n'
C_HELLO = '#include <stdio.h>\nint main(void) { puts("hello from c"); return 0; }\n'

failures = 0


def report(ok: bool, name: str, why: str) -> None:
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {why}", flush=True)


def call(base: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def run(base: str, body: dict[str, Any]) -> dict[str, Any]:
    # A client that keeps to the rate limit: the emulation's long JOB_TIMEOUT_MS makes each submission cost more.
    for _ in range(30):
        status, job = call(base, "/run", body)
        if status != 429:
            break
        time.sleep(float(job.get("retryAfter", 5)))
    if status != 200:
        return {"status": f"HTTP {status}", "reason": job}
    return job  # type: ignore[no-any-return]


def summary(job: dict[str, Any]) -> str:
    keys = ("status", "reason", "exitCode", "signal", "cpuTimeMs", "memoryPeakBytes", "executionTimeMs")
    brief = {k: job.get(k) for k in keys}
    brief["stdout"] = (job.get("stdout") or "")[:200]
    brief["stderr"] = (job.get("stderr") or "")[-300:]
    if job.get("compileOutput"):
        brief["compileOutput"] = job["compileOutput"][-300:]
    return json.dumps(brief)


def check_health(base: str) -> None:
    status, health = call(base, "/health")
    limits = (health or {}).get("sandbox", {}).get("limits", {})
    print("health limits:", json.dumps(limits), flush=True)
    for name in ("memory", "processes"):
        by = str(limits.get(name, {}).get("enforcedBy"))
        report(by.startswith("cgroup v2"), f"{name} limit enforced by cgroup v2", by)
    cpu = str(limits.get("cpu", {}).get("enforcedBy"))
    report("cgroup v2" in cpu, "job-wide CPU accounted by cgroup v2", cpu)


def check_hello(base: str, language: str, code: str) -> None:
    job = run(base, {"language": language, "code": code})
    ok = job.get("status") == "completed" and job.get("stdout") == f"hello from {language}\n"
    report(ok, f"{language} hello", summary(job))
    measured = isinstance(job.get("cpuTimeMs"), int | float) and (job.get("memoryPeakBytes") or 0) > 0
    report(measured, f"{language} cpuTimeMs and memoryPeakBytes reported", summary(job))


def check_memory(base: str, name: str = "memory hog (400 MB, limit 256 MB)") -> bool:
    job = run(base, {"language": "python", "code": MEMORY_HOG})
    ok = job.get("status") == "failed" and job.get("reason") == "memory_limit"
    report(ok, name, summary(job))
    return ok


def check_all(base: str) -> None:
    check_health(base)
    check_hello(base, "python", 'print("hello from python")\n')
    check_hello(base, "c", C_HELLO)
    check_hello(base, "java", JAVA_HELLO)
    # node (pre-started in warm sandboxes) needs its preload.js reachable by the job's uid, as java its launcher.
    check_hello(base, "javascript", 'console.log("hello from javascript")\n')
    check_memory(base)
    job = run(base, {"language": "python", "code": FORK_BOMB})
    ok = job.get("stdout") == "refused: Resource temporarily unavailable\n" and job.get("exitCode") == 0
    report(ok, "fork bomb stopped by the pids limit", summary(job))
    job = run(base, {"language": "python", "code": REFORKING_SPINNER, "cpuTimeLimitMs": 1000})
    cpu = job.get("cpuTimeMs")
    ok = job.get("reason") == "cpu_limit" and isinstance(cpu, int | float) and cpu < 4000
    report(ok, "job-wide CPU limit (1 s) stops a re-forking tree", summary(job))


def main() -> int:
    base = sys.argv[1].rstrip("/")
    what = sys.argv[2] if len(sys.argv) > 2 else "all"
    if what == "all":
        check_all(base)
    elif what == "memory-hogs":
        count = int(sys.argv[3])
        passed = sum(check_memory(base, f"memory hog {i + 1}/{count}") for i in range(count))
        report(passed == count, f"{count} jobs hit their memory limit", f"{passed} of {count} ended memory_limit")
    elif what == "hello":
        job = run(base, {"language": "python", "code": "print(6 * 7)"})
        report(job.get("stdout") == "42\n", "a python job", summary(job))
    elif what == "sleeper":
        # For the SIGKILL check: a job that stays running until it is killed (the caller does not wait).
        status, job = call(base, "/run?wait=false", {"language": "bash", "code": f"exec -a {sys.argv[3]} sleep 600"})
        report(status == 202, "a long job queued", json.dumps(job))
    else:
        print(f"unknown check {what}", file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"jobs.py took {time.monotonic() - started:.0f} s", flush=True)
    sys.exit(code)
