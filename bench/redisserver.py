"""A throwaway redis-server for the benchmarks: free 127.0.0.1 port, temp dir, no persistence."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis


def available() -> bool:
    return os.path.exists(shutil.which("redis-server") or "/usr/bin/redis-server")


@contextmanager
def redis_server() -> Iterator[str]:
    """Start redis-server, yield its URL, stop it on exit. Raises RuntimeError when it cannot start."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-redis-") as workdir:
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            with redis.Redis.from_url(url) as client:
                deadline = time.monotonic() + 10
                while True:
                    try:
                        client.ping()
                        break
                    except redis.ConnectionError:
                        if time.monotonic() > deadline or proc.poll() is not None:
                            raise RuntimeError("redis-server did not start") from None
                        time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def flush(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushall()
