"""Settings: one frozen dataclass read from the environment and an optional `.env` file."""

from __future__ import annotations

from .environment import read_env_file
from .settings import Settings

__all__ = ["Settings", "read_env_file"]
