"""The pages' vendor bundles (static/vendor, built from web/ by `make assets`): consistent, self-contained, gzipped."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson

from tests.conftest import AppClientFactory

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "static" / "vendor"
BUNDLES = ("codemirror.js", "uplot.js", "uplot.css", "swagger-ui.js", "swagger-ui.css")


def test_bundles_are_there_with_their_gzip_twins_and_licenses() -> None:
    for name in BUNDLES:
        data = (VENDOR / name).read_bytes()
        # Browsers would ask for a map we do not ship, and a CDN reference would break offline use.
        assert b"sourceMappingURL" not in data[-300:], name
        twin = VENDOR / f"{name}.gz"
        if len(data) > 10_000:
            assert gzip.decompress(twin.read_bytes()) == data, f"{twin.name} is stale: run make assets"
    lock = orjson.loads((ROOT / "web" / "package-lock.json").read_bytes())
    licenses = (VENDOR / "LICENSES.txt").read_text()
    for package in ("codemirror", "@codemirror/lang-python", "@codemirror/legacy-modes", "uplot", "swagger-ui-dist"):
        version = lock["packages"][f"node_modules/{package}"]["version"]
        assert f"{package} {version} " in licenses


async def test_browsers_that_accept_gzip_get_it(app_client: AppClientFactory) -> None:
    client = await app_client()
    resp = await client.get("/static/vendor/swagger-ui.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
    body = await resp.read()
    assert len(body) < (VENDOR / "swagger-ui.js").stat().st_size / 3
    assert gzip.decompress(body) == (VENDOR / "swagger-ui.js").read_bytes()
    plain = await client.get("/static/vendor/swagger-ui.js", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
