"""Build cache benchmark: the second run of an identical hello (Java, C, C++, Rust) against the first.

Run by hand from the repo root: `python -m bench cache`. Each round submits a program no earlier round has seen (a
fresh comment), twice, through the real sandbox in this process (`Sandbox()`, as the queue calls it), with the build
cache on in a temp dir: the first run compiles (a miss), the second finds the build (a hit) and only runs. A third
figure is the same program with the cache off (compile and run in one sandbox, as before the cache), so the cost a
miss adds is measured too. The figures are ratios of medians measured in the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid

from server.judging.executor import Judge as Sandbox  # the executor the queue calls
from server.queue.jobs import Job, JobIO
from server.settings import Settings

ROUNDS = 5
HELLOS = {
    "java": '// {marker}\npublic class Main { public static void main(String[] a) { System.out.println("hello"); } }\n',
    "c": '// {marker}\n#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n',
    "cpp": '// {marker}\n#include <iostream>\nint main() { std::cout << "hello" << std::endl; return 0; }\n',
    "rust": '// {marker}\nfn main() { println!("hello"); }\n',
}
KINDS = ("first (compile)", "second (cached)", "cache off")


def _io() -> JobIO:
    return JobIO(on_output=lambda stream, text: None)


async def _timed(sandbox: Sandbox, language: str, code: str, *, cached: bool) -> float:
    started = time.perf_counter()
    result = await sandbox(Job(language=language, code=code), _io())
    elapsed = time.perf_counter() - started
    if result.stdout != "hello\n" or result.compile_cached is not cached:
        raise RuntimeError(f"{language}: unexpected result {result}")
    return elapsed


async def measure() -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {lang: {kind: [] for kind in KINDS} for lang in HELLOS}
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-cache-") as cache_dir:
        on = await Sandbox.create(Settings(cache_dir=cache_dir, cache_max_mb=256), languages=list(HELLOS))
        off = await Sandbox.create(Settings(cache_max_mb=0), languages=list(HELLOS))
        try:
            for _ in range(ROUNDS):
                for language, template in HELLOS.items():
                    code = template.replace("{marker}", uuid.uuid4().hex)
                    times[language]["cache off"].append(await _timed(off, language, code, cached=False))
                    times[language]["first (compile)"].append(await _timed(on, language, code, cached=False))
                    times[language]["second (cached)"].append(await _timed(on, language, code, cached=True))
        finally:
            await on.close()
            await off.close()
    return times


def main() -> None:
    times = asyncio.run(measure())
    for language, kinds in times.items():
        medians = {kind: statistics.median(values) for kind, values in kinds.items()}
        figures = ", ".join(f"{kind} {medians[kind] * 1000:.0f} ms" for kind in KINDS)
        speedup = medians["first (compile)"] / medians["second (cached)"]
        miss_cost = medians["first (compile)"] / medians["cache off"]
        print(f"{language:>5}: {figures}; second run {speedup:.1f}x faster; a miss costs {miss_cost:.2f}x cache off")
    print(f"({ROUNDS} rounds, medians, same run)")


if __name__ == "__main__":
    main()
