"""Packages: the operator's package sets per language, installed into versioned read-only layers jobs import from."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..settings import Settings

logger = logging.getLogger(__name__)

MANIFEST = "conveyor-layer.json"
MOUNT = "/packages"  # where a job sees its language's layer (read-only)
MAX_PACKAGES = 200
PYTHON = "/usr/bin/python3"  # the interpreter jobs run (PATH=/usr/bin:/bin inside the sandbox)


@dataclass(frozen=True, slots=True)
class Layer:
    """One installed package set: a directory never changed once installed (a new set is a new version)."""

    language: str
    version: str
    path: Path
    packages: tuple[tuple[str, str], ...]  # (name, version) as installed, dependencies included
    size: int = 0  # bytes on disk (measured once: a layer never changes)

    def env(self, root: str) -> dict[str, str]:
        """The import path pointing at the layer mounted at `root`."""
        if self.language == "python":
            return {"PYTHONPATH": root}
        return {"NODE_PATH": f"{root}/node_modules"}

    def describe(self) -> list[dict[str, str]]:
        return [{"name": name, "version": version} for name, version in self.packages]


def load_packages_file(path: Path) -> dict[str, tuple[str, ...]]:
    """`python = ["numpy==2.1.3", ...]`, `javascript = ["lodash@4.17.21"]`; ValueError naming what is wrong."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    sets: dict[str, tuple[str, ...]] = {}
    for language, specs in data.items():
        if language not in INSTALLERS:
            raise ValueError(f"{path}: {language!r}: packages are supported for {', '.join(INSTALLERS)}")
        if not isinstance(specs, list) or not all(isinstance(s, str) and _plain(s) for s in specs):
            raise ValueError(f"{path}: {language}: expected a list of package names (pinned versions allowed)")
        if len(specs) > MAX_PACKAGES:
            raise ValueError(f"{path}: {language}: at most {MAX_PACKAGES} packages")
        sets[language] = tuple(specs)
    return sets


def _plain(spec: str) -> bool:
    # A requirement, never an option or a URL: pip and npm must not be told to read files or fetch from elsewhere.
    return bool(spec) and not spec.startswith("-") and not any(c.isspace() for c in spec) and "://" not in spec


def layers_root(settings: Settings) -> Path:
    return settings.cache_path / "packages"


def layer_version(language: str, specs: tuple[str, ...], runtime: str) -> str:
    """The set's version: a hash of what was asked for and the runtime it is for (a new interpreter, a new layer)."""
    text = json.dumps({"language": language, "packages": sorted(specs), "runtime": runtime})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_layers(settings: Settings) -> dict[str, Layer]:
    """The installed layer of each language of PACKAGES_FILE (none: a warning naming the install command)."""
    if not settings.packages_file:
        return {}
    try:
        sets = load_packages_file(Path(settings.packages_file))
    except ValueError as exc:
        logger.warning("PACKAGES_FILE: %s; jobs run without packages", exc)
        return {}
    layers = {}
    for language, specs in sets.items():
        try:
            runtime = INSTALLERS[language].runtime()
        except (OSError, subprocess.CalledProcessError) as exc:
            logger.warning("%s packages unavailable: cannot read the runtime's version (%s)", language, exc)
            continue
        path = layers_root(settings) / language / layer_version(language, specs, runtime)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            logger.warning(
                "%s packages not installed for this PACKAGES_FILE: run python -m server packages install", language
            )
            continue
        packages = tuple((str(name), str(version)) for name, version in manifest["packages"])
        layers[language] = Layer(language, path.name, path, packages, _size(path))
    return layers


def _size(root: Path) -> int:
    return sum(Path(d, name).lstat().st_size for d, _, names in os.walk(root) for name in names)


def stats(layers: dict[str, Layer]) -> dict[str, Any]:
    """The layers jobs get now, for GET /cache/status."""
    return {
        "layers": len(layers),
        "packages": sum(len(layer.packages) for layer in layers.values()),
        "bytes": sum(layer.size for layer in layers.values()),
        "versions": {language: layer.version for language, layer in sorted(layers.items())},
    }


def install(settings: Settings, out: IO[str] = sys.stdout) -> int:
    """`python -m server packages install`: build every missing layer of PACKAGES_FILE; exit status."""
    if not settings.packages_file:
        print("PACKAGES_FILE is not set: nothing to install", file=out)
        return 2
    try:
        sets = load_packages_file(Path(settings.packages_file))
    except ValueError as exc:
        print(f"conveyor: {exc}", file=out)
        return 2
    failed = 0
    for step, (language, specs) in enumerate(sets.items(), 1):
        installer = INSTALLERS[language]
        version = layer_version(language, specs, installer.runtime())
        final = layers_root(settings) / language / version
        head = f"[{step}/{len(sets)}] {language} {version}:"
        if (final / MANIFEST).exists():
            print(f"{head} up to date ({len(specs)} packages)", file=out, flush=True)
            continue
        print(f"{head} installing {' '.join(specs)}", file=out, flush=True)
        try:
            packages = _build(final, specs, installer, out)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"{head} failed: {exc}", file=out, flush=True)
            failed += 1
            continue
        listed = ", ".join(f"{name} {ver}" for name, ver in packages)
        print(f"{head} done: {listed}", file=out, flush=True)
    return 1 if failed else 0


def _build(final: Path, specs: tuple[str, ...], installer: Installer, out: IO[str]) -> tuple[tuple[str, str], ...]:
    """Install into a temp dir beside the final one, freeze it read-only, then rename it into place: a layer is
    complete or absent, and an installed one is never changed (jobs that started with it keep it whole)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for parent in (final.parent.parent, final.parent):
        parent.chmod(0o755)  # the sandbox user must reach the layer to mount it
    temp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        installer.install(temp, specs, out)
        packages = installer.installed(temp)
        (temp / MANIFEST).write_text(json.dumps({"packages": packages, "requested": list(specs)}))
        _freeze(temp)
        os.rename(temp, final)
    except BaseException:
        _thaw(temp)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return tuple(packages)


def _freeze(root: Path) -> None:
    """Everyone may read, nobody may write (jobs also get it as a read-only bind mount)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                path.chmod(0o555 if os.access(path, os.X_OK) else 0o444)
        for name in dirnames:
            Path(dirpath, name).chmod(0o555)
    root.chmod(0o555)


def _thaw(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        Path(dirpath).chmod(0o755)
        for name in dirnames:
            Path(dirpath, name).chmod(0o755)


@dataclass(frozen=True, slots=True)
class Installer:
    """How one language's packages are installed and listed."""

    runtime: Callable[[], str]
    install: Callable[[Path, tuple[str, ...], IO[str]], None]
    installed: Callable[[Path], list[tuple[str, str]]]


def _run(argv: list[str], out: IO[str]) -> None:
    """Run an installer with its own progress output shown as it comes."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write("    " + line)
            out.flush()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv[:3])


def _python_runtime() -> str:
    done = subprocess.run(
        [PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _pip_install(target: Path, specs: tuple[str, ...], out: IO[str]) -> None:
    # The server's own pip, choosing wheels for the interpreter jobs run (binary only: nothing is built here).
    argv = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-compile"]
    argv += ["--only-binary=:all:", "--python-version", _python_runtime(), "--target", str(target), *specs]
    _run(argv, out)


def _pip_installed(target: Path) -> list[tuple[str, str]]:
    found = []
    for metadata in sorted(target.glob("*.dist-info/METADATA")):
        fields: dict[str, Any] = {}
        for line in metadata.read_text(errors="replace").splitlines():
            if not line:
                break
            key, _, value = line.partition(": ")
            fields.setdefault(key, value)
        found.append((str(fields.get("Name", metadata.parent.name)), str(fields.get("Version", "?"))))
    return found


def _node_runtime() -> str:
    return subprocess.run(["/usr/bin/node", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def _npm_install(target: Path, specs: tuple[str, ...], out: IO[str]) -> None:
    argv = ["npm", "install", "--prefix", str(target), "--no-audit", "--no-fund", "--no-save", "--ignore-scripts"]
    _run([*argv, *specs], out)


def _npm_installed(target: Path) -> list[tuple[str, str]]:
    found = []
    for manifest in sorted(target.glob("node_modules/*/package.json")) + sorted(
        target.glob("node_modules/@*/*/package.json")
    ):
        data = json.loads(manifest.read_text())
        found.append((str(data.get("name")), str(data.get("version"))))
    return found


INSTALLERS = {
    "python": Installer(runtime=_python_runtime, install=_pip_install, installed=_pip_installed),
    "javascript": Installer(runtime=_node_runtime, install=_npm_install, installed=_npm_installed),
}
