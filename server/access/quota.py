"""The caller's quota: GET /ratelimit shows both buckets as the next request would find them, costing nothing."""

from __future__ import annotations

from typing import Any, get_args

import orjson
from aiohttp import web

from .identity import CLIENT, anonymous, peer_ip
from .ratelimit import Bucket, Decision, RateLimiter


def describe(decision: Decision) -> dict[str, Any]:
    """One bucket in the terms of the rate-limit headers (X-RateLimit-*, RateLimit, Retry-After)."""
    return {
        "limit": decision.limit,
        "remaining": decision.remaining,
        "resetAfter": decision.reset_after_s,
        "retryAfter": decision.retry_after_s,
        "policy": decision.policy.header,
    }


def setup_quota(app: web.Application, limiter: RateLimiter) -> None:
    """Add GET /ratelimit. It draws from no bucket: the editor asks after every run to show what is left."""

    async def get_quota(request: web.Request) -> web.Response:
        client = request.get(CLIENT) or anonymous(peer_ip(request))
        body = {bucket: describe(await limiter.peek(client, bucket)) for bucket in get_args(Bucket)}
        return web.Response(
            body=orjson.dumps(body), content_type="application/json", headers={"Cache-Control": "no-store"}
        )

    app.router.add_get("/ratelimit", get_quota)
