"""server/doors/openapi.json against the server: a schema fuzzer (schemathesis) sends every operation of every door
(native, Piston, Judge0) generated requests, valid and not, and no answer may be a 5xx or carry a traceback."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import Counter
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err

from server.app import create_app
from server.queue.jobs import Runner
from tests.conftest import make_settings

# Each operation gets this many generated requests per mode (valid, then invalid) and per body example: enough to
# reach every handler's refusals, few enough that the whole document runs in well under a minute on two cores.
# CONVEYOR_FUZZ_EXAMPLES=200 fuzzes deeper, for a run by hand.
EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES", "6"))
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")


def _fuzz(spec: dict[str, Any], base_url: str) -> tuple[list[str], Counter[tuple[str, int]]]:
    """Every operation of `spec` against `base_url`: the failures found, one line each, and how many answers of each
    status each operation got."""
    failures: list[str] = []
    answers: Counter[tuple[str, int]] = Counter()
    session = requests.Session()
    for result in schemathesis.openapi.from_dict(spec).get_all_operations():
        if isinstance(result, Err):
            failures.append(f"the document does not load: {result.err()}")
            continue
        operation = result.ok()
        # Generated bodies rarely name a language the host has: the document's examples run real jobs through each
        # door (their query strings and headers still generated), then generation explores around them.
        runs = [
            (f"example {name}", operation.as_strategy(GenerationMode.POSITIVE, body=value))
            for name, value in _body_examples(spec, operation.path, operation.method)
        ]
        runs += [(mode.value, operation.as_strategy(generation_mode=mode)) for mode in GenerationMode]
        for label, strategy in runs:
            try:
                _run(strategy, base_url, session, answers)
            except Unsatisfiable:
                pass  # nothing to make invalid: an operation without parameters or body has no negative mode
            except Exception as exc:  # every operation is fuzzed: all findings are reported together
                failures.append(f"{operation.label} ({label}): {str(exc)[:1500]}")
    return failures, answers


def _run(
    strategy: SearchStrategy[Case[Any]],
    base_url: str,
    session: requests.Session,
    answers: Counter[tuple[str, int]],
) -> None:
    """EXAMPLES requests drawn from `strategy`, seeded: no 5xx, no traceback in any answer."""

    @seed(22)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Case[Any]) -> None:
        response = case.call(base_url=base_url, session=session, timeout=30)
        answers[(case.operation.label, response.status_code)] += 1
        assert not TRACEBACK.search(response.text), f"{response.status_code} carries a traceback: {response.text[:300]}"
        case.validate_response(response, checks=[not_a_server_error])

    check()


def _body_examples(spec: dict[str, Any], path: str, method: str) -> list[tuple[str, Any]]:
    """The request body examples the document gives an operation, by name."""
    media = spec["paths"][path][method.lower()].get("requestBody", {}).get("content", {}).get("application/json", {})
    refs = {name: example["$ref"].rsplit("/", 1)[1] for name, example in media.get("examples", {}).items()}
    return [(name, spec["components"]["examples"][ref]["value"]) for name, ref in refs.items()]


async def test_fuzz_every_door(sandbox: Runner, caplog: pytest.LogCaptureFixture) -> None:
    # Small queue and short jobs so the submissions the fuzzer makes cannot pile up; rate limits out of its way.
    app = create_app(
        make_settings(
            job_timeout_ms=1000,
            compile_timeout_ms=5000,
            max_queue_size=8,
            rate_limit_requests=100_000,
            rate_limit_read_requests=100_000,
        ),
        runner=sandbox,
    )
    caplog.set_level(logging.WARNING)
    async with TestServer(app, host="127.0.0.1") as server:
        base_url = str(server.make_url("")).rstrip("/")
        spec = orjson.loads((await asyncio.to_thread(requests.get, f"{base_url}/openapi.json", timeout=10)).content)
        failures, answers = await asyncio.to_thread(_fuzz, spec, base_url)
    assert not failures, "\n\n".join(failures)
    # Every operation was reached, each door's submissions ran real jobs (not only refusals).
    reached = {label for label, _ in answers}
    assert len(reached) == sum(1 for _ in schemathesis.openapi.from_dict(spec).get_all_operations())
    for label, status in (("POST /run", 200), ("POST /api/v2/execute", 200), ("POST /judge0/submissions", 201)):
        assert answers[(label, status)] > 0, (label, sorted(answers.items()))
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not logged, [r.getMessage() for r in logged]
