"""systemd: asks the service manager over D-Bus for a transient scope with a delegated cgroup, for this process."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from jeepney import DBusAddress, HeaderFields, Message, MessageType, Parser, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import prep_socket

MANAGER = DBusAddress(
    "/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1", interface="org.freedesktop.systemd1.Manager"
)
CALL_TIMEOUT_S = 5.0
MOVE_TIMEOUT_S = 5.0
_MAX_REPLY = 1 << 20  # a StartTransientUnit reply is a few hundred bytes; a peer that sends more is not systemd


class Unavailable(Exception):
    """systemd could not be asked, or refused: the message says which and why."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One way to reach a service manager: its private socket (what systemctl uses), or the message bus."""

    path: str
    bus: bool  # a message bus (dbus-daemon, dbus-broker) wants Hello first; a manager's private socket does not
    label: str


def booted() -> bool:
    """Whether systemd runs this host (sd_booted(3) checks the same directory)."""
    return os.path.isdir("/run/systemd/system")


def endpoints() -> list[Endpoint]:
    """Where this process's service manager answers: the system manager for root, the user's own manager
    otherwise (it delegates memory and pids to the user's units on current distributions)."""
    if os.geteuid() == 0:
        system_bus = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
        return [
            Endpoint("/run/systemd/private", False, "the system manager (/run/systemd/private)"),
            *_bus(system_bus, "the system manager (system bus)"),
        ]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    session_bus = os.environ.get("DBUS_SESSION_BUS_ADDRESS", f"unix:path={runtime}/bus")
    return [
        Endpoint(f"{runtime}/systemd/private", False, f"the user manager ({runtime}/systemd/private)"),
        *_bus(session_bus, "the user manager (session bus)"),
    ]


def _bus(address: str, label: str) -> list[Endpoint]:
    for part in address.split(";"):
        kind, _, params = part.partition(":")
        fields = dict(p.partition("=")[::2] for p in params.split(","))
        if kind == "unix" and "path" in fields:
            return [Endpoint(fields["path"], True, label)]
    return []


def start_delegated_scope(description: str) -> tuple[str, str]:
    """Ask the service manager for a transient scope holding this process, with its cgroup delegated to us, and
    wait until the kernel shows us in it. Returns (scope name, how it was asked). Raises Unavailable."""
    # The pid namespace in the name: a later server sweeps only scopes whose pid it can see (delegation.py).
    name = f"conveyor-{os.stat('/proc/self/ns/pid').st_ino}-{os.getpid()}-{secrets.token_hex(3)}.scope"
    properties = [
        ("Description", ("s", description)),
        ("PIDs", ("au", [os.getpid()])),
        ("Delegate", ("b", True)),
        # The scope goes away with its last process, also when that process failed.
        ("CollectMode", ("s", "inactive-or-failed")),
    ]
    call = new_method_call(MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))", (name, "fail", properties, []))
    problems = []
    for endpoint in endpoints():
        if not os.path.exists(endpoint.path):
            problems.append(f"{endpoint.label}: no socket")
            continue
        try:
            _call(endpoint, call)
        except Unavailable as exc:
            problems.append(f"{endpoint.label}: {exc}")
            continue
        _wait_for_move(name)
        return name, endpoint.label
    raise Unavailable("; ".join(problems) or "no service manager socket")


def _call(endpoint: Endpoint, call: Message) -> Message:
    try:
        sock = prep_socket(endpoint.path, timeout=CALL_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise Unavailable(f"cannot connect: {exc}") from None
    with contextlib.closing(sock):
        sock.settimeout(CALL_TIMEOUT_S)
        serial = 1
        if endpoint.bus:
            sock.sendall(message_bus.Hello().serialise(serial=serial))
            serial += 1
        sock.sendall(call.serialise(serial=serial))
        reply = _reply(sock, serial)
    if reply.header.message_type == MessageType.error:
        error = reply.header.fields.get(HeaderFields.error_name, "error")
        detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise Unavailable(f"{error}: {detail}".rstrip(": "))
    return reply


def _reply(sock: socket.socket, serial: int) -> Message:
    parser = Parser()
    received = 0
    try:
        while received < _MAX_REPLY:
            data = sock.recv(65536)
            if not data:
                break
            received += len(data)
            for message in parser.feed(data):
                if message.header.fields.get(HeaderFields.reply_serial) == serial:
                    return message
    except OSError as exc:  # socket.timeout included
        raise Unavailable(f"no answer: {exc or 'timed out'}") from None
    raise Unavailable("the connection closed before an answer")


def _wait_for_move(scope: str) -> None:
    """The manager moves us when its start job runs, an instant after the call returns."""
    deadline = time.monotonic() + MOVE_TIMEOUT_S
    while time.monotonic() < deadline:
        if own_cgroup().rstrip("/").endswith("/" + scope):
            return
        time.sleep(0.01)
    raise Unavailable(f"the manager created {scope} but did not move this process into it")


def own_cgroup() -> str:
    """This process's cgroup v2 path, relative to the hierarchy's root ("" when there is none)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""
