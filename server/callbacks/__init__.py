"""Callbacks: a finished job delivered, at least once, to the URL its submitter named, never as an SSRF proxy.

`guard` vets every address a callback connects to; `client` makes one request; `outbox` (SQLite) and
`redis_outbox` keep what is still to deliver across restarts; `sender` claims, delivers, retries and abandons.
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
from .outbox import Claim, Delivery, Entry, OutboxStore, SqliteOutbox
from .sender import CallbackSender, backoff, callback_sender

__all__ = [
    "IDEMPOTENCY_HEADER",
    "MAX_URL_LENGTH",
    "REFUSED",
    "SIGNATURE_HEADER",
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
    "SqliteOutbox",
    "address_allowed",
    "backoff",
    "callback_sender",
    "check_callback_url",
    "embedded_ipv4",
    "is_local_address",
]
