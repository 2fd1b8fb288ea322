"""The D-Bus conversation with systemd (sandbox/systemd.py) against a stand-in manager on a unix socket, which moves
the caller into a scope cgroup on the kernel's real unified hierarchy as systemd does. The real systemd, system and
user manager, is in the VM (`make test-vm`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from jeepney import HeaderFields, Message, Parser, new_error, new_method_call, new_method_return

from server.sandbox import delegation, systemd
from tests.test_delegation import UNIFIED, _pids, scratch  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(UNIFIED is None, reason="needs root and a cgroup v2 hierarchy with a free controller")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Manager:
    """A stand-in for systemd's manager: answers StartTransientUnit by moving the PIDs into <slice>/<name> and
    marking it delegated, or with the error it is told to give."""

    path: str
    slice: Path
    bus: bool = False
    error: str | None = None
    calls: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)

    def serve(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                self._converse(conn)

    def _converse(self, conn: socket.socket) -> None:
        data = b""
        while b"BEGIN\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
            if b"AUTH EXTERNAL" in data and b"OK " not in data:
                conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
                data += b"OK "
        parser = Parser()
        rest = data.split(b"BEGIN\r\n", 1)[1]
        while True:
            for msg in parser.feed(rest):
                conn.sendall(self._answer(msg).serialise(serial=len(self.calls) + 1000))
            rest = conn.recv(65536)
            if not rest:
                return

    def _answer(self, msg: Message) -> Message:
        member = msg.header.fields[HeaderFields.member]
        self.calls.append((member, msg.body))
        if member == "Hello":
            return (
                new_method_return(msg, "s", (":1.42",))
                if self.bus
                else new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod")
            )
        if self.error is not None:
            return new_error(msg, self.error, "s", ("Access denied",))
        name, _mode, properties, _aux = msg.body
        props = dict(properties)
        assert UNIFIED is not None  # a delegated unit's controllers are enabled down to it, as systemd does
        (self.slice / "cgroup.subtree_control").write_text(f"+{UNIFIED[1]}")
        scope = self.slice / name
        scope.mkdir()
        if props["Delegate"][1]:
            os.setxattr(scope, "trusted.delegate", b"1")
        for pid in props["PIDs"][1]:
            (scope / "cgroup.procs").write_text(str(pid))
        return new_method_return(msg, "o", ("/org/freedesktop/systemd1/job/7",))


@pytest.fixture
def manager(scratch: Path, tmp_path: Path) -> Iterator[Manager]:  # noqa: F811
    fake = Manager(str(tmp_path / "private"), scratch)
    server = socket.socket(socket.AF_UNIX)
    server.bind(fake.path)
    server.listen()
    thread = threading.Thread(target=fake.serve, args=(server,), daemon=True)
    thread.start()
    yield fake
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(timeout=5)


ASK = """
import json, os, sys
from pathlib import Path
from server.sandbox import delegation, systemd
path, bus, where, mount, controller = sys.argv[1:6]
with open(Path(where) / "cgroup.procs", "w") as f:
    f.write(str(os.getpid()))
systemd.booted = lambda: True
systemd.endpoints = lambda: [systemd.Endpoint(path, bus == "1", "the stand-in manager")]
try:
    got = delegation.claim(Path(mount), (controller,), manager="systemd")
except delegation.Refused as exc:
    print(json.dumps({"refused": str(exc)}))
else:
    print(json.dumps({"root": str(got.root), "how": got.how, "own": systemd.own_cgroup(), "pid": os.getpid()}))
"""


def _ask(manager: Manager, start_in: Path) -> dict[str, object]:
    assert UNIFIED is not None
    argv = [sys.executable, "-c", ASK, manager.path, "1" if manager.bus else "0", str(start_in), str(UNIFIED[0])]
    out = subprocess.run([*argv, UNIFIED[1]], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("bus", [False, True], ids=["private-socket", "message-bus"])
def test_a_delegated_scope_is_asked_for_and_claimed(manager: Manager, scratch: Path, bus: bool) -> None:  # noqa: F811
    manager.bus = bus
    session = scratch / "session-1.scope"  # a login shell's scope: not delegated, and not a service
    session.mkdir()
    got = _ask(manager, session)
    assert [call[0] for call in manager.calls] == (["Hello"] if bus else []) + ["StartTransientUnit"]
    name, mode, properties, aux = manager.calls[-1][1]
    props = dict(properties)  # type: ignore[call-overload]
    assert str(name).startswith("conveyor-") and str(name).endswith(".scope") and mode == "fail" and aux == []
    assert props["Delegate"] == ("b", True) and props["PIDs"] == ("au", [got["pid"]])
    scope = scratch / str(name)
    assert got["root"] == str(scope) and "delegated scope" in str(got["how"]) and "stand-in" in str(got["how"])
    # The server ended in the scope's leaf, the jobs' cgroups go beside it.
    assert str(got["own"]).endswith(f"/{name}/{delegation.LEAF}")
    assert UNIFIED is not None and UNIFIED[1] in (scope / "cgroup.subtree_control").read_text().split()


def test_a_manager_that_refuses_is_named_in_the_refusal(manager: Manager, scratch: Path) -> None:  # noqa: F811
    manager.error = "org.freedesktop.DBus.Error.AccessDenied"
    got = _ask(manager, scratch)
    refused = str(got.get("refused"))
    assert "stand-in manager" in refused and "AccessDenied" in refused and "Access denied" in refused, got
    assert _pids(scratch) == set()  # the asking process is gone, nothing was moved


def test_no_socket_is_said_plainly(tmp_path: Path) -> None:
    missing = systemd.Endpoint(str(tmp_path / "nothing"), False, "nobody")
    call = new_method_call(systemd.MANAGER, "Reload")
    with pytest.raises(systemd.Unavailable, match="cannot connect"):
        systemd._call(missing, call)


def test_a_peer_that_never_answers_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "silent")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    monkeypatch.setattr(systemd, "CALL_TIMEOUT_S", 0.5)
    with pytest.raises(systemd.Unavailable, match="cannot connect"):
        systemd._call(systemd.Endpoint(path, False, "silent"), new_method_call(systemd.MANAGER, "Reload"))
    server.close()


def test_a_dead_servers_scope_is_swept_and_a_live_ones_is_not(manager: Manager, scratch: Path) -> None:  # noqa: F811
    # A server killed with its guard leaves a job's bubblewrap (pid 1 of its namespace) holding its scope, which
    # systemd then keeps for ever; the next server's start kills what is left in such scopes beside its own.
    assert UNIFIED is not None
    (scratch / "cgroup.subtree_control").write_text(f"+{UNIFIED[1]}")
    namespace = os.stat("/proc/self/ns/pid").st_ino
    dead = scratch / f"conveyor-{namespace}-999999999-abcdef.scope"
    foreign = scratch / "conveyor-1-999999999-abcdef.scope"  # another pid namespace's: not ours to judge
    foreign.mkdir()
    dead.mkdir()
    orphan = subprocess.Popen(["sleep", "60"])
    (dead / "cgroup.procs").write_text(str(orphan.pid))
    alive = subprocess.Popen(["sleep", "60"])
    stranger = subprocess.Popen(["sleep", "60"])
    (foreign / "cgroup.procs").write_text(str(stranger.pid))
    live = scratch / f"conveyor-{namespace}-{alive.pid}-012345.scope"
    live.mkdir()
    (live / "cgroup.procs").write_text(str(alive.pid))
    session = scratch / "session-2.scope"
    session.mkdir()
    try:
        got = _ask(manager, session)
        assert "delegated scope" in str(got["how"]), got
        assert orphan.wait(timeout=30) == -9  # killed
        assert alive.poll() is None  # a live server's scope is left alone
        assert stranger.poll() is None  # and so is another namespace's
    finally:
        for proc in (orphan, alive, stranger):
            proc.kill()
            proc.wait()
