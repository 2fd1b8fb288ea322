"""Executor: what the queue calls to run a job (queue.jobs.Runner): the job checked, then judged over the sandbox."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..queue.jobs import Job
from ..sandbox.contract import ExecutionResult, JobIO
from ..sandbox.runner import Sandbox
from ..settings import Settings
from .judge import judge


class Judge:
    """The executor: runs each job in the sandbox (its tests, when it has some, each in a fresh sandbox after one
    compile) and gives every result its verdict; the rest of queue.jobs.Runner is the sandbox's."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    @classmethod
    async def create(
        cls,
        settings: Settings,
        *,
        cgroups: bool = True,
        languages: Collection[str] | None = None,
        helper: bool = True,
        one_loop: bool = False,
    ) -> Judge:
        """The executor over a sandbox checked and probed on this host (see Sandbox.create)."""
        return cls(
            await Sandbox.create(settings, cgroups=cgroups, languages=languages, helper=helper, one_loop=one_loop)
        )

    async def __call__(self, job: Job, io: JobIO) -> ExecutionResult:
        """Run one job to its end. On cancellation the process tree, cgroup and work dir are gone before re-raise."""
        if not self.sandbox.offers(job.language):
            return ExecutionResult(reason="unsupported_language", stderr=f"Unknown language {job.language!r}.\n")
        if any("\0" in arg for arg in job.args):
            return ExecutionResult(reason="invalid_args", stderr="Arguments cannot contain NUL characters.\n")
        return await judge(self.sandbox, job, io)

    def runtimes(self) -> list[dict[str, Any]]:
        return self.sandbox.runtimes()

    def cache_status(self) -> dict[str, Any]:
        return self.sandbox.cache_status()

    def pool_status(self) -> dict[str, Any]:
        return self.sandbox.pool_status()

    def resolve(self, name: str) -> str | None:
        return self.sandbox.resolve(name)

    def describe(self) -> dict[str, Any]:
        return self.sandbox.describe()

    async def close(self) -> None:
        await self.sandbox.close()
