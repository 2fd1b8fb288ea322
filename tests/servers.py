"""Real `python -m server` processes for the tests that kill, restart or run several of them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import aiohttp

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


class ServerProcess:
    """One server on a free port of 127.0.0.1, its output in `tmp_path/server-<port>.log`; `env` over the
    process's own environment."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Two languages are probed at start-up, not all fifty: these tests' jobs are bash and python.
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(self.port), "LANGUAGES": "bash,python", **env}
        self.log = tmp_path / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> Self:
        """Start it and wait until /health answers (the log is in the failure when it dies or never answers)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server"], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    async with session.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "server did not start:\n" + self.log.read_text()
                await asyncio.sleep(0.1)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        self.signal(signal.SIGKILL)
        self.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
