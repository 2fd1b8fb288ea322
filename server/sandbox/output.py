"""Output: a run's stdout and stderr pumped as they arrive within one shared cap, and its compiler's output."""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Callable

from .contract import JobIO, Stream
from .result import Outcome, text_of

READ_SIZE = 65536
CHUNK = 16384  # largest piece handed to on_output, so one flood cannot become one huge event


class Output:
    """What a run printed, kept up to `cap` bytes in all; past it, `stop` ends the run with reason output_limit."""

    def __init__(self, cap: int, io: JobIO | None, out: Outcome, stop: Callable[[str], None]) -> None:
        self._cap = cap
        self._used = 0
        self._on_output = io.on_output if io is not None else None
        self._out = out
        self._stop = stop
        self._raw: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._compile_output = bytearray()
        self.draining = False  # set at teardown: pumps keep reading to EOF but keep nothing

    async def pump(self, reader: asyncio.StreamReader, stream: Stream) -> None:
        """Forward one output pipe as it arrives, decoded incrementally, within the shared output cap."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        on_output = self._on_output
        raw = self._raw[stream]
        while data := await reader.read(READ_SIZE):
            if self._out.truncated or self.draining:
                continue  # read until the killed tree closes the pipe
            room = self._cap - self._used
            if len(data) > room:
                data = data[:room]
                self._out.truncated = True
            self._used += len(data)
            raw += data
            if on_output is not None:
                for start in range(0, len(data), CHUNK):
                    text = decoder.decode(data[start : start + CHUNK])
                    if text:
                        on_output(stream, text)
            if self._out.truncated:
                self._stop("output_limit")
        tail = "" if on_output is None or self._out.truncated or self.draining else decoder.decode(b"", final=True)
        if tail and on_output is not None:
            on_output(stream, tail)

    async def collect(self, reader: asyncio.StreamReader) -> None:
        """Compiler output: kept up to the output cap, the rest read and dropped so the compiler never blocks."""
        while data := await reader.read(READ_SIZE):
            self._compile_output += data[: max(0, self._cap - len(self._compile_output))]

    def finish(self) -> None:
        """Put what was kept into the outcome, as bytes and as text."""
        out = self._out
        out.stdout_bytes, out.stderr_bytes = bytes(self._raw["stdout"]), bytes(self._raw["stderr"])
        out.stdout, out.stderr = text_of(out.stdout_bytes, out.truncated), text_of(out.stderr_bytes, out.truncated)
        out.compile_output_bytes = bytes(self._compile_output)
        out.compile_output = out.compile_output_bytes.decode(errors="replace")
