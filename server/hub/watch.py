"""Job watches: one listener on the queue's events that hands a job's events to whoever follows that job."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..keys import QUEUE
from ..queue.events import Event, Listener


class JobWatch:
    """Routes each event to the listeners of its job: one dict lookup per event, however many jobs are followed.

    The compat APIs follow the jobs they submit (Piston's interleaved `output` and its WebSocket, Judge0's
    callbacks); one entry per followed job, removed by the function `follow` returns.
    """

    def __init__(self) -> None:
        self._by_job: dict[str, list[Listener]] = {}

    def __call__(self, event: Event) -> None:
        for listener in tuple(self._by_job.get(event["jobId"], ())):
            listener(event)

    def follow(self, job_id: str, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every event of `job_id` from now on; returns the function that stops it.

        Follow before submitting: the job can start, and print, before `submit` returns."""
        self._by_job.setdefault(job_id, []).append(listener)

        def stop() -> None:
            listeners = self._by_job.get(job_id)
            if listeners is not None and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._by_job[job_id]

        return stop

    def __len__(self) -> int:
        return len(self._by_job)


WATCH = web.AppKey("watch", JobWatch)


def job_watch(app: web.Application) -> JobWatch:
    """The app's JobWatch, created (and subscribed to the queue's events for the app's lifetime) on first use."""
    if WATCH not in app:
        watch = app[WATCH] = JobWatch()

        async def subscribe(app: web.Application) -> AsyncIterator[None]:
            unsubscribe = app[QUEUE].events.subscribe(watch)
            try:
                yield
            finally:
                unsubscribe()

        app.cleanup_ctx.append(subscribe)
    return app[WATCH]
