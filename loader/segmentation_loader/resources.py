"""Where the loader finds what it installs: SQL files, migrations, the server package."""

from __future__ import annotations

import os
from pathlib import Path

import segmentation


def project_root() -> Path:
    """The checkout that holds ``sql/``, ``migrations/`` and ``plpython/``.

    ``SEGMENTATION_HOME`` overrides it (e.g. in the Docker image).
    """
    env = os.environ.get("SEGMENTATION_HOME")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2]


def sql_dir() -> Path:
    return project_root() / "sql"


def migrations_dir() -> Path:
    return project_root() / "migrations"


def server_package_dir() -> Path:
    """Source directory of the server-side ``segmentation`` package."""
    return Path(segmentation.__file__).resolve().parent


def server_requirements() -> Path:
    return project_root() / "plpython" / "requirements-server.txt"


def native_source() -> Path:
    """C source of categorize_player(game_id, features) (built by :mod:`library`)."""
    return project_root() / "native" / "categorize_features.c"
