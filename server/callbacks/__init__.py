"""Callbacks: a finished job delivered, at least once, to the URL its submitter named, never as an SSRF proxy.

`guard` vets every address a callback connects to; `client` makes one request; `outbox` (the records),
`sqlite_outbox` and `redis_outbox` keep what is still to deliver across restarts, armed at submission, filled at the
job's end; `sender` claims, delivers, retries and abandons; `recovery` fills what no follower saw end.
"""

from __future__ import annotations

from .client import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, CallbackClient, Outcome
from .guard import (
    MAX_URL_LENGTH,
    REFUSED,
    CallbackRefused,
    ConnectGuard,
    GuardedResolver,
    address_allowed,
    check_callback_url,
    embedded_ipv4,
    is_local_address,
)
from .outbox import Armed, Claim, Delivery, Entry, OutboxStore
from .recovery import BodyOf, Recovery, recovering
from .sender import CallbackSender, backoff, callback_sender
from .sqlite_outbox import SqliteOutbox

__all__ = [
    "IDEMPOTENCY_HEADER",
    "MAX_URL_LENGTH",
    "REFUSED",
    "SIGNATURE_HEADER",
    "Armed",
    "BodyOf",
    "CallbackClient",
    "CallbackRefused",
    "CallbackSender",
    "Claim",
    "ConnectGuard",
    "Delivery",
    "Entry",
    "GuardedResolver",
    "Outcome",
    "OutboxStore",
    "Recovery",
    "SqliteOutbox",
    "address_allowed",
    "backoff",
    "callback_sender",
    "check_callback_url",
    "embedded_ipv4",
    "is_local_address",
    "recovering",
]
