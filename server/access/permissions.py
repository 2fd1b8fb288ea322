"""Access to jobs: who may read, cancel and drive one, and the display handle everyone else sees instead of its id.

The rules (docs/security.md has them as a table):
- An admin may do anything to any job.
- A key-owned job ("key:<user>") is read, cancelled and driven by that user only, even by someone who knows its id.
- An anonymous job: its id is the capability to read and cancel it (as a Judge0 token); driving it (stdin, eof,
  stop) also needs its owner token or the WebSocket that submitted it.
Everyone else gets exactly the answer an unknown id gets, so a refusal never confirms that a job exists.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ..errors import NotFound
from ..queue import QueueBackend
from ..queue.jobs import Job
from .identity import Client

KEY_OWNER_PREFIX = "key:"
HANDLE_CHARS = 12


def not_found(job_id: str) -> NotFound:
    """The one answer for an unknown id and for a job the caller may not touch."""
    return NotFound(f"No job with id {job_id!r}.")


def may_read(client: Client, job: Job) -> bool:
    """Read (REST, subscribe, `since`) and cancel: admins, a key-owned job's user, anyone holding an anonymous
    job's id."""
    if client.admin:
        return True
    if job.owner.startswith(KEY_OWNER_PREFIX):
        return client.owner == job.owner
    return True


def may_drive(client: Client, job: Job, *, submitted_here: bool = False) -> bool:
    """stdin, eof and stop: admins, a key-owned job's user, an anonymous job's owner token or submitting socket."""
    if client.admin:
        return True
    if job.owner.startswith(KEY_OWNER_PREFIX):
        return client.owner == job.owner
    return submitted_here or (client.owner is not None and client.owner == job.owner)


def is_owner(client: Client, job: Job) -> bool:
    """The client is the job's owner itself (not an admin acting on it)."""
    return client.owner is not None and client.owner == job.owner


async def readable_job(queue: QueueBackend, client: Client, job_id: str) -> Job:
    job = await queue.get(job_id)
    if job is None or not may_read(client, job):
        raise not_found(job_id)
    return job


async def drivable_job(queue: QueueBackend, client: Client, job_id: str, *, submitted_here: bool = False) -> Job:
    job = await queue.get(job_id)
    if job is None or not may_drive(client, job, submitted_here=submitted_here):
        raise not_found(job_id)
    return job


class Handles:
    """Display handles: a keyed hash of the id, short and stable for one server process.

    A handle names a row on the dashboard and nothing else: no endpoint accepts one, and without the key (random,
    never leaves the process) it cannot be turned back into the id, which is the capability.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def __call__(self, job_id: str) -> str:
        return hmac.new(self._key, job_id.encode(), hashlib.sha256).hexdigest()[:HANDLE_CHARS]
