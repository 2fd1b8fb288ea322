"""Judge benchmark: a C program with 10 tests as one job (compiled once) against the same 10 tests as 10 jobs.

Run by hand from the repo root: `python -m bench judge`. Both sides go through the real sandbox in this process
(`Sandbox()`, as the queue calls it), in alternating rounds so that other load on the host hits both alike. The
figure is the ratio of the two medians measured in the same run; Judge0 compiles once per submission, so N tests
as N submissions cost N compiles there.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from server.judging.executor import Judge as Sandbox  # the executor the queue calls
from server.queue.jobs import Job, JobIO, TestCase
from server.settings import Settings

TESTS = 10
ROUNDS = 5
PROGRAM = (
    "#include <stdio.h>\n"
    'int main(void) { long a, b; if (scanf("%ld %ld", &a, &b) != 2) return 1; printf("%ld\\n", a + b); return 0; }\n'
)
CASES = [TestCase(stdin=f"{i} {i * 2}", expected_output=str(i * 3)) for i in range(TESTS)]


def _io() -> JobIO:
    return JobIO(on_output=lambda stream, text: None)


async def one_job(sandbox: Sandbox) -> None:
    result = await sandbox(Job(language="c", code=PROGRAM, tests=CASES), _io())
    if result.verdict != "accepted":
        raise RuntimeError(f"tests job failed: {result}")


async def separate_jobs(sandbox: Sandbox) -> None:
    for case in CASES:
        result = await sandbox(
            Job(language="c", code=PROGRAM, stdin=case.stdin, expected_output=case.expected_output), _io()
        )
        if result.verdict != "accepted":
            raise RuntimeError(f"separate job failed: {result}")


async def measure() -> dict[str, list[float]]:
    # The cache off: this compares one compile against N compiles, as Judge0 does them.
    sandbox = await Sandbox.create(Settings(cache_max_mb=0), languages=["c"])
    times: dict[str, list[float]] = {"one job, 10 tests": [], "10 separate jobs": []}
    try:
        await one_job(sandbox)  # warm the page cache for gcc
        for _ in range(ROUNDS):
            for name, run in (("one job, 10 tests", one_job), ("10 separate jobs", separate_jobs)):
                started = time.perf_counter()
                await run(sandbox)
                times[name].append(time.perf_counter() - started)
    finally:
        await sandbox.close()
    return times


def main() -> None:
    times = asyncio.run(measure())
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        low, high = min(values) * 1000, max(values) * 1000
        print(f"{name:>20}: median {medians[name] * 1000:7.0f} ms  (min {low:.0f}, max {high:.0f})")
    ratio = medians["10 separate jobs"] / medians["one job, 10 tests"]
    print(f"tests compiled once are {ratio:.2f}x faster than 10 separate runs ({ROUNDS} rounds, same run)")


if __name__ == "__main__":
    main()
