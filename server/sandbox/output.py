"""Output: a run's stdout and stderr taken as they arrive within one shared cap, and its compiler's output."""

from __future__ import annotations

import codecs
from collections.abc import Callable

from .contract import JobIO, Stream
from .result import Outcome, text_of

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
        self.draining = False  # set at teardown: the pipes are read to EOF but nothing is kept

    def sink(self, stream: Stream) -> Callable[[bytes], bool]:
        """What one output pipe's data goes to (Pipes): forwarded as it arrives, decoded incrementally, within the
        shared output cap; b"" is the pipe's end. Past the cap, or once draining, the rest is read and dropped until
        the killed tree closes the pipe."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        on_output = self._on_output
        raw = self._raw[stream]
        out = self._out

        def take(data: bytes) -> bool:
            if not data:
                if on_output is not None and not out.truncated and not self.draining:
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        on_output(stream, tail)
                return True
            if out.truncated or self.draining:
                return True
            room = self._cap - self._used
            if len(data) > room:
                data = data[:room]
                out.truncated = True
            self._used += len(data)
            raw.extend(data)
            if on_output is not None:
                for start in range(0, len(data), CHUNK):
                    text = decoder.decode(data[start : start + CHUNK])
                    if text:
                        on_output(stream, text)
            if out.truncated:
                self._stop("output_limit")
            return True

        return take

    def collect(self, data: bytes) -> bool:
        """Compiler output (a sink): kept up to the output cap, the rest read and dropped so the compiler never
        blocks."""
        self._compile_output += data[: max(0, self._cap - len(self._compile_output))]
        return True

    def finish(self) -> None:
        """Put what was kept into the outcome, as bytes and as text."""
        out = self._out
        out.stdout_bytes, out.stderr_bytes = bytes(self._raw["stdout"]), bytes(self._raw["stderr"])
        out.stdout, out.stderr = text_of(out.stdout_bytes, out.truncated), text_of(out.stderr_bytes, out.truncated)
        out.compile_output_bytes = bytes(self._compile_output)
        out.compile_output = out.compile_output_bytes.decode(errors="replace")
