"""Calls of one script made at the same time, sent to Redis together: one pipeline, one round trip for them all."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeout

# Calls in one pipeline at most: a burst past it goes in the next one (sent as soon as this one is answered).
MAX_BATCH = 256


class AutoPipeline:
    """Sends a script's calls as they come, those made while a send is under way together in the next one.

    A lone call goes out at once (in the sender task); under load, calls gather while the previous pipeline is on
    the wire, so each pipeline carries what arrived meanwhile. A command's fixed cost in the client (a connection
    from the pool, its deadline, packing, the send and the read) and in Redis (reading and answering a request) is
    paid once a pipeline instead of once a call: with 20 concurrent enqueues it was most of an enqueue's CPU
    (docs/benchmarks-redis.md). Each call still ends within the pool's deadline: a caller that waited that long
    gets redis-py's TimeoutError, as for a command of its own (its call may still reach Redis, as a command whose
    reply was lost may; the script must be idempotent for that, as ENQUEUE is). Scripts only: no transaction
    across calls, each is atomic on its own.

    Written here because redis-py (5.x and 8.x) has no automatic pipelining: its pipelines batch only what one caller
    puts in them.
    """

    def __init__(self, client: Any, script: Any) -> None:
        self._client = client
        self._script = script
        self._deadline_s: float = client.connection_pool.deadline_s
        # One entry per call not yet sent: as many as callers waiting, each gone within the deadline.
        self._waiting: list[tuple[list[Any], list[Any], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def __call__(self, *, keys: list[Any], args: list[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, args, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        try:
            async with asyncio.timeout(self._deadline_s):
                return await future
        except TimeoutError:
            raise RedisTimeout(f"Redis did not answer within {self._deadline_s * 1000:.0f} ms") from None

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    await self._send_batch(batch)
                except Exception as exc:  # the pipeline's own failure (timeout, connection) is each call's
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
        finally:
            self._sender = None

    async def _send_batch(self, batch: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        replies = await self._execute(batch)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            # Redis lost its script cache (a restart, SCRIPT FLUSH): load it once and send the batch again (a
            # call that ran before the loss ran to its end; the scripts sent this way are idempotent).
            self._script.sha = await self._client.script_load(self._script.script)
            replies = await self._execute(batch)
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller gave up (deadline, cancelled)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, batch: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        sha = self._script.sha
        for keys, args, _ in batch:
            pipe.evalsha(sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
