"""Every installed language through the compat doors: its starter by its Piston name and by each of its Judge0 ids."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from server.compat.judge0.catalog import JUDGE0_FILE
from server.compat.piston.runtimes import load_names
from server.keys import SETTINGS
from server.sandbox.languages import load_languages
from tests.test_language_matrix import QUICK

LANGUAGES = load_languages()
PISTON = load_names()
with JUDGE0_FILE.open("rb") as f:
    JUDGE0_IDS = {row["id"]: row["language"] for row in tomllib.load(f)["languages"]}
HELLO = "Hello, world!\n"

Client = TestClient[Request, Application]


def marked(values: list[Any], language_of: Any) -> list[Any]:
    return [pytest.param(v, marks=() if language_of(v) in QUICK else pytest.mark.languages) for v in values]


async def skip_unless_offered(client: Client, name: str) -> None:
    offered = {r["language"] for r in await (await client.get("/runtimes")).json()}
    if name not in offered:
        pytest.skip(f"{name} is not installed here")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", marked(sorted(set(LANGUAGES) - {"executable"}), lambda n: n))
async def test_piston_runs_every_language_by_its_piston_name(client: Client, name: str) -> None:
    await skip_unless_offered(client, name)
    piston_name = PISTON.get(name, {}).get("language", name)
    runtimes = await (await client.get("/api/v2/runtimes")).json()
    assert any(r["language"] == piston_name for r in runtimes)
    # Piston's own default run_timeout is 3 s: a runtime that loads its whole library at start (Racket) can take
    # longer on a busy two-core host, which is a timing fact, not a name or mapping failure.
    body = {
        "language": piston_name,
        "version": "*",
        "files": [{"content": LANGUAGES[name].hello}],
        "run_timeout": client.app[SETTINGS].job_timeout_ms,
    }
    response = await client.post("/api/v2/execute", json=body)
    data = await response.json()
    assert response.status == 200, data
    assert (data["run"]["stdout"], data["run"]["code"]) == (HELLO, 0), data


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "language_id", marked(sorted(i for i, n in JUDGE0_IDS.items() if n != "executable"), JUDGE0_IDS.get)
)
async def test_judge0_runs_every_id(client: Client, language_id: int) -> None:
    name = JUDGE0_IDS[language_id]
    await skip_unless_offered(client, name)
    listed = await (await client.get("/judge0/languages")).json()
    assert any(entry["id"] == language_id for entry in listed)
    body = {"source_code": LANGUAGES[name].hello, "language_id": language_id}
    response = await client.post("/judge0/submissions?base64_encoded=false&wait=true", json=body)
    data = await response.json()
    assert response.status == 201, data
    assert (data["status"]["id"], data["stdout"]) == (3, HELLO), data


def test_judge0_serves_at_least_38_of_its_47_ids() -> None:
    assert len(JUDGE0_IDS) >= 38
    assert set(JUDGE0_IDS.values()) <= set(LANGUAGES)
    assert set(PISTON) <= set(LANGUAGES)
