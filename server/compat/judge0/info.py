"""Judge0's information routes under `/judge0`: languages, statuses, configuration, workers, statistics, about."""

from __future__ import annotations

import datetime
import os
import platform
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ...doors.api import client_of, json_response
from ...doors.listing import LIST_WINDOW
from ...keys import QUEUE, RUNNER, SETTINGS
from .attributes import Extras
from .catalog import VERSION, Catalog, Judge0Config
from .status import listed_status

ABOUT = {
    "version": VERSION,
    "homepage": None,
    "source_code": None,
    "maintainer": "Conveyor, serving Judge0 CE's API (docs/compat.md)",
}
LICENSE = "Conveyor is MIT licensed. It serves Judge0 CE's API; it contains none of Judge0's code.\n"


def _text(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/plain")


class Judge0Info:
    """The information routes; `catalog` gives the runner's languages as Judge0 numbers them (read when asked)."""

    def __init__(self, app: web.Application, catalog: Callable[[], Catalog], config: Judge0Config) -> None:
        self.app = app
        self.catalog = catalog
        self.config = config

    def setup(self) -> None:
        router = self.app.router
        router.add_get("/judge0/", self.home)
        router.add_get("/judge0/languages", self.languages)
        router.add_get("/judge0/languages/all", self.all_languages)
        router.add_get("/judge0/languages/{id}", self.language)
        router.add_get("/judge0/statuses", self.statuses)
        router.add_get("/judge0/about", self.about)
        router.add_get("/judge0/version", self.version)
        router.add_get("/judge0/isolate", self.isolate)
        router.add_get("/judge0/license", self.license)
        router.add_get("/judge0/config_info", self.config_info)
        router.add_get("/judge0/system_info", self.system_info)
        router.add_get("/judge0/statistics", self.statistics)
        router.add_get("/judge0/workers", self.workers)
        router.add_post("/judge0/authenticate", self.authenticate)
        router.add_post("/judge0/authorize", self.authorize)

    async def home(self, request: web.Request) -> web.Response:
        return web.Response()

    async def languages(self, request: web.Request) -> web.Response:
        entries = sorted(self.catalog().offered(), key=lambda e: (e.name, e.id))
        return json_response([e.brief() for e in entries])

    async def all_languages(self, request: web.Request) -> web.Response:
        entries = sorted(self.catalog().offered(), key=lambda e: (e.name, e.id))
        return json_response([{**e.brief(), "is_archived": False} for e in entries])

    async def language(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        # ASCII digits only: str.isdigit() is true of "²", which int() refuses.
        entry = self.catalog().by_id(int(raw)) if raw.isascii() and raw.isdigit() and len(raw) <= 10 else None
        if entry is None:
            return json_response({"status": 404, "error": "Not Found"}, status=404)
        return json_response(entry.to_dict())

    async def statuses(self, request: web.Request) -> web.Response:
        return json_response([{"id": i, "description": d} for i, d in sorted(self.catalog().statuses.items())])

    async def about(self, request: web.Request) -> web.Response:
        return json_response(ABOUT)

    async def version(self, request: web.Request) -> web.Response:
        return _text(VERSION)

    async def isolate(self, request: web.Request) -> web.Response:
        described = self.app[RUNNER].describe()
        backend = described.get("backend", "unknown")
        version = described.get("bwrapVersion")
        return _text(f"Conveyor sandbox: {backend}{' ' + version if version else ''} (not isolate)\n")

    async def license(self, request: web.Request) -> web.Response:
        return _text(LICENSE)

    async def config_info(self, request: web.Request) -> web.Response:
        return json_response(self.config.info(self.app[SETTINGS]))

    async def system_info(self, request: web.Request) -> web.Response:
        """What Judge0 takes from lscpu and free, from the same kernel files."""
        info: dict[str, Any] = {"Architecture": platform.machine(), "CPU(s)": str(os.cpu_count() or 0)}
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
            if model:
                info["Model name"] = model
            with open("/proc/meminfo", encoding="utf-8") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("MemTotal", "SwapTotal"):
                        info["Mem" if key == "MemTotal" else "Swap"] = f"{int(value.split()[0]) / 1024 / 1024:.1f}G"
        except OSError:
            pass
        return json_response(info)

    async def statistics(self, request: web.Request) -> web.Response:
        """Judge0's statistics over what the queue has: totals since start, languages and statuses of the jobs it
        still retains (the newest LIST_WINDOW finished ones). There is no database, and no per-day history."""
        queue = self.app[QUEUE]
        stats = await queue.stats()
        # Summaries (metadata and the brief result), never whole jobs: any caller may ask.
        jobs = await queue.listing(LIST_WINDOW)
        catalog = self.catalog()
        languages: Counter[tuple[int, str]] = Counter()
        statuses: Counter[int] = Counter()
        for job in jobs:
            extras = Extras.from_json(job.dialect)
            entry = catalog.by_id(extras.language_id) if extras.language_id else catalog.for_language(job.language)
            if entry is not None:
                languages[(entry.id, entry.name)] += 1
            statuses[listed_status(job, extras)] += 1
        now = datetime.datetime.now(datetime.UTC)
        return json_response(
            {
                "created_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "cached_until": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "submissions": {"total": stats.get("totalQueued", 0), "today": None, "last_30_days": {}},
                "languages": [
                    {"language": {"id": lid, "name": name}, "count": count}
                    for (lid, name), count in languages.most_common()
                ],
                "statuses": [
                    {"status": {"id": sid, "name": catalog.statuses[sid]}, "count": count}
                    for sid, count in statuses.most_common()
                ],
                "database": {"size_pretty": None, "size_in_bytes": None},
            }
        )

    async def workers(self, request: web.Request) -> web.Response:
        stats = await self.app[QUEUE].stats()
        running, slots = stats.get("runningCount", 0), stats.get("maxConcurrent", 0)
        return json_response(
            [
                {
                    "queue": "conveyor",
                    "size": stats.get("queueLength", 0),
                    "available": slots,
                    "idle": max(0, slots - running),
                    "working": running,
                    "paused": 0,
                    "failed": stats.get("totalFailed", 0),
                }
            ]
        )

    async def authenticate(self, request: web.Request) -> web.Response:
        """200: the key is valid or none was sent (a bad key is refused with 401 before this runs)."""
        return web.Response()

    async def authorize(self, request: web.Request) -> web.Response:
        """200 for an admin key (Judge0's X-Auth-User), 403 otherwise."""
        return web.Response(status=200 if client_of(request).admin else 403)
