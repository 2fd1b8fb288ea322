"""Settings: environment over `.env`, seed defaults, one-line refusals for invalid values."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.errors import SettingsError
from server.settings import Settings
from server.settings.help import HELP

ROOT = Path(__file__).resolve().parent.parent


def test_seed_defaults() -> None:
    s = Settings.from_env({}, env_file=None)
    assert (s.host, s.port) == ("127.0.0.1", 3001)
    assert (s.max_concurrent_jobs, s.max_queue_size, s.job_timeout_ms) == (5, 100, 10_000)
    assert (s.rate_limit_requests, s.rate_limit_window_ms, s.effective_burst) == (10, 60_000, 10)
    assert (s.job_retention_seconds, s.job_retention_count, s.max_code_bytes) == (86_400, 10_000, 65_536)


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport PORT=4000\nMAX_QUEUE_SIZE='7'\nHOST=0.0.0.0 # trailing\n")
    s = Settings.from_env({"PORT": "5000"}, env_file=env_file)
    assert (s.port, s.max_queue_size, s.host) == (5000, 7, "0.0.0.0")


@pytest.mark.parametrize(
    ("name", "value", "form"),
    [
        ("MAX_CONCURRENT_JOBS", "abc", "an integer from 1 to 10000"),
        ("MAX_CONCURRENT_JOBS", "-1", "an integer from 1 to 10000"),
        ("PORT", "99999", "an integer from 0 to 65535"),
        ("TRUSTED_PROXIES", "10.0.0.0/8,nonsense", "CIDR"),
        ("SANDBOX", "docker", "one of bwrap, none"),
        ("RETRY_LOST_JOBS", "maybe", "true/false"),
    ],
)
def test_invalid_values_name_variable_and_form(name: str, value: str, form: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value}, env_file=None)
    assert name in str(info.value) and form in str(info.value)


def test_malformed_env_file_line(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("JUSTAWORD\n")
    with pytest.raises(SettingsError, match=r"\.env:1"):
        Settings.from_env({}, env_file=env_file)


def test_env_example_documents_every_variable() -> None:
    text = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in Settings.env_names():
        assert f"{name}=" in text, f"{name} missing from .env.example"
        assert f"`{name}`" in readme, f"{name} missing from README configuration table"


@pytest.mark.parametrize("env", [{"MAX_CONCURRENT_JOBS": "abc"}, {"MAX_CONCURRENT_JOBS": "-1"}, {"PORT": "99999"}])
def test_start_up_refuses_invalid_values_with_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server"],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert next(iter(env)) in lines[0] and "Traceback" not in proc.stderr


def test_readme_table_says_what_help_says() -> None:
    # `python -m server --help` prints Settings.describe(); the README table must carry the same meanings.
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| [^|]* \| (.*) \|$", readme, re.MULTILINE))
    described = Settings.describe()
    assert [name for name, _, _ in described] == Settings.env_names()
    for name, _, doc in described:
        assert doc, f"{name} has no meaning (its entry in server/settings/help.py)"
        assert rows.get(name) == doc, f"README row of {name} differs from its meaning in server/settings/help.py"


def test_help_holds_one_meaning_per_setting_in_order() -> None:
    # The meanings live apart from the fields (server/settings/help.py): none left behind by a setting that went,
    # and in the fields' order, so the file reads as --help and the README table do.
    assert list(HELP) == Settings.env_names()


def test_help_lists_every_setting_with_its_default() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--help"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m server")
    for name, default, _ in Settings.describe():
        assert f"  {name}={default}\n" in proc.stdout
    assert "  RATE_LIMIT_REQUESTS=10\n      submissions (POST /run, WebSocket run) per window per client" in proc.stdout
