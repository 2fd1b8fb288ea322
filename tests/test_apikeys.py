"""API keys: the keys file, lookup, Bearer authentication and `hash-key`."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from server.access.apikeys import ApiKeys, authenticate, client_for_key, hash_key_main
from server.errors import SettingsError, Unauthorized
from server.settings import Settings

ALICE_KEY = "alice-secret-key"
BOB_KEY = "bob-secret-key"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "keys.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def keys(tmp_path: Path) -> ApiKeys:
    return ApiKeys.load(
        _write(
            tmp_path,
            f"""
[[keys]]
name = "alice"
sha256 = "{_digest(ALICE_KEY)}"
max_priority = 10
rate_limit_requests = 100
rate_limit_burst = 200
admin = true

[[keys]]
name = "bob"
sha256 = "{_digest(BOB_KEY).upper()}"
""",
        )
    )


def test_load_and_lookup(keys: ApiKeys) -> None:
    assert len(keys) == 2
    assert keys.names == ["alice", "bob"]
    alice = keys.lookup(ALICE_KEY)
    assert alice is not None
    assert (alice.name, alice.max_priority, alice.admin) == ("alice", 10, True)
    assert (alice.rate_limit_requests, alice.rate_limit_burst) == (100, 200)
    bob = keys.lookup(BOB_KEY)
    assert bob is not None
    assert (bob.max_priority, bob.admin, bob.rate_limit_requests, bob.rate_limit_burst) == (0, False, None, None)
    assert keys.lookup("nope") is None
    assert keys.lookup(_digest(ALICE_KEY)) is None  # the digest itself is not a key


def test_empty_path_means_no_keys() -> None:
    assert len(ApiKeys.load("")) == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[keys]\n", "not valid TOML"),
        ('title = "x"\n', "unknown top-level key 'title'"),
        ('keys = "x"\n', "array of tables"),
        ('[[keys]]\nsha256 = "{d}"\n', "'name'"),
        ('[[keys]]\nname = "a b"\nsha256 = "{d}"\n', "'name'"),
        ('[[keys]]\nname = "a"\n', "'sha256' must be 64 hex digits"),
        ('[[keys]]\nname = "a"\nsha256 = "abc"\n', "'sha256' must be 64 hex digits"),
        ('[[keys]]\nname = "a"\nkey = "plain"\nsha256 = "{d}"\n', "unknown field 'key' (store the key's digest"),
        ('[[keys]]\nname = "a"\nsha256 = "{d}"\nmax_priority = -1\n', "'max_priority' must be an integer >= 0"),
        ('[[keys]]\nname = "a"\nsha256 = "{d}"\nmax_priority = true\n', "'max_priority' must be an integer"),
        ('[[keys]]\nname = "a"\nsha256 = "{d}"\nrate_limit_requests = 0\n', "'rate_limit_requests' must be"),
        ('[[keys]]\nname = "a"\nsha256 = "{d}"\nrate_limit_burst = 1.5\n', "'rate_limit_burst' must be"),
        ('[[keys]]\nname = "a"\nsha256 = "{d}"\nadmin = 1\n', "'admin' must be true or false"),
        ('[[keys]]\nname = "a"\nsha256 = "{d}"\n[[keys]]\nname = "a"\nsha256 = "{e}"\n', "duplicate name 'a'"),
        ('[[keys]]\nname = "a"\nsha256 = "{d}"\n[[keys]]\nname = "b"\nsha256 = "{d}"\n', "same sha256"),
    ],
)
def test_invalid_file_stops_start_up_with_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path, text.format(d=_digest("k1"), e=_digest("k2")))
    with pytest.raises(SettingsError) as exc:
        ApiKeys.load(path)
    message = str(exc.value)
    assert message.startswith(f"API_KEYS_FILE={path!r}: ")
    assert problem in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"API_KEYS_FILE=.*cannot read the file"):
        ApiKeys.load(str(tmp_path / "missing.toml"))


def _auth(keys: ApiKeys, *authorization: str, settings: Settings | None = None) -> object:
    headers = CIMultiDict(("Authorization", value) for value in authorization)
    request = make_mocked_request("POST", "/run", headers=headers).clone(remote="203.0.113.7")
    return authenticate(request, keys, settings or Settings())


def test_authenticate(keys: ApiKeys) -> None:
    anon = _auth(keys)
    assert anon == client_for_key(None, "203.0.113.7", keys)
    alice = _auth(keys, f"Bearer {ALICE_KEY}")
    assert alice == client_for_key(ALICE_KEY, "203.0.113.7", keys)
    assert _auth(keys, f"bearer   {BOB_KEY}") == client_for_key(BOB_KEY, "203.0.113.7", keys)


def test_client_for_key(keys: ApiKeys) -> None:
    alice = client_for_key(ALICE_KEY, "2001:db8::/56", keys)
    assert alice.key == "user:alice"
    assert (alice.user, alice.ip, alice.max_priority, alice.admin) == ("alice", "2001:db8::/56", 10, True)
    assert (alice.rate_limit_requests, alice.rate_limit_burst) == (100, 200)
    assert client_for_key(None, "203.0.113.7", keys).key == "ip:203.0.113.7"
    assert (alice.owner, client_for_key(None, "203.0.113.7", keys).owner) == ("key:alice", None)
    with pytest.raises(Unauthorized, match="Unknown API key"):
        client_for_key("wrong", "203.0.113.7", keys)
    with pytest.raises(Unauthorized, match="Malformed"):
        client_for_key("", "203.0.113.7", keys)


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (("Bearer nope",), "Unknown API key"),
        (("Basic YWxpY2U6eA==",), "Malformed Authorization"),
        (("Bearer",), "Malformed Authorization"),
        (("Bearer ",), "Malformed Authorization"),
        (("Bearer two words",), "Malformed API key"),
        (("Bearer \u00e9t\u00e9",), "Malformed API key"),
        ((f"Bearer {ALICE_KEY}", f"Bearer {BOB_KEY}"), "one Authorization header"),
    ],
)
def test_bad_authorization_is_401_never_anonymous(keys: ApiKeys, authorization: tuple[str, ...], message: str) -> None:
    with pytest.raises(Unauthorized, match=message) as exc:
        _auth(keys, *authorization)
    assert exc.value.headers["WWW-Authenticate"].startswith('Bearer realm="conveyor"')


def test_any_key_is_401_when_no_keys_are_configured() -> None:
    with pytest.raises(Unauthorized):
        _auth(ApiKeys(), "Bearer something")


LONG_KEY = "cvy_alice-hand-made-key-0123"
OTHER_KEY = "cvy_bob-hand-made-key-456789"


def _entry(key: str) -> str:
    return (
        '[[keys]]\nname = "CHANGE-ME"    # the key\'s user, as the logs and the dashboard name it\n'
        f'sha256 = "{_digest(key)}"\n# admin = true        # may read, cancel, stop and run again any job\n'
    )


def test_hash_key_from_argv(capsys: pytest.CaptureFixture[str]) -> None:
    assert hash_key_main([LONG_KEY]) == 0
    assert capsys.readouterr().out == _entry(LONG_KEY)


def test_hash_key_refuses_a_short_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert hash_key_main([ALICE_KEY]) == 2  # 16 characters
    captured = capsys.readouterr()
    assert captured.out == "" and "too easy to guess; use at least 24" in captured.err


def test_hash_key_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(LONG_KEY + "\n"))
    assert hash_key_main([]) == 0
    assert capsys.readouterr().out == _entry(LONG_KEY)
    monkeypatch.setattr("sys.stdin", io.StringIO(OTHER_KEY))
    assert hash_key_main(["-"]) == 0
    assert capsys.readouterr().out == _entry(OTHER_KEY)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert hash_key_main(["-"]) == 2


def test_hash_key_generates_a_key_and_an_entry_to_paste(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert hash_key_main([]) == 0
    out = capsys.readouterr().out
    key = out.splitlines()[0].removeprefix("key:").split()[0]
    assert key.startswith("cvy_") and len(key) >= 40
    entry = out.split("\n\n", 1)[1]
    assert entry == _entry(key)
    # The printed entry, pasted as it is, works end to end.
    keys = ApiKeys.load(_write(tmp_path, entry))
    assert client_for_key(key, "203.0.113.7", keys).user == "CHANGE-ME"


def test_hash_key_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert hash_key_main(["--help"]) == 0
    assert "usage:" in capsys.readouterr().out
    assert hash_key_main(["a", "b"]) == 2
    assert "usage:" in capsys.readouterr().err
    assert hash_key_main(["has space"]) == 2
