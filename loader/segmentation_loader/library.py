"""Provision the version-pinned library directory for the server's Python.

Layout (as in Timescale pgai): ``<base>/<version>/`` holds numpy, scipy,
scikit-learn and the ``segmentation`` package, installed with pip ``--target``
so nothing touches the system or user site-packages. PL/Python functions put
exactly that directory first on ``sys.path`` (see ``sql/010_bootstrap.sql``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from segmentation import __version__

from segmentation_loader.errors import LoaderError
from segmentation_loader.resources import server_package_dir, server_requirements

DEFAULT_BASE = Path("/usr/local/lib/segmentation")
_MARKER = ".requirements.sha256"


def library_dir(base: Path) -> Path:
    return base / __version__


def _requirements_digest() -> str:
    text = server_requirements().read_bytes()
    tag = f"{sys.version_info.major}.{sys.version_info.minor}".encode()
    return hashlib.sha256(text + tag).hexdigest()


def provision(base: Path, *, python: str = sys.executable, log=print) -> Path:
    """Install the pinned dependencies (once) and the package (every time) into
    ``<base>/<version>``; return that directory.

    Dependencies are reinstalled only when ``requirements-server.txt`` changed;
    the small ``segmentation`` package is always refreshed so an upgrade in place
    replaces the code. The directory is made world-readable because the server
    runs as another OS user.
    """
    target = library_dir(base)
    digest = _requirements_digest()
    marker = target / _MARKER
    try:
        base.mkdir(parents=True, exist_ok=True)
    except PermissionError as exc:
        raise LoaderError(
            f"cannot create the server-side library directory {base}",
            "run as root (or with sudo), or pass --lib-dir with a directory the "
            "PostgreSQL server can read and set segmentation.python_lib_dir to it",
        ) from exc
    if not (marker.exists() and marker.read_text().strip() == digest):
        log(f"installing pinned server-side Python libraries into {target}")
        staging = Path(tempfile.mkdtemp(prefix=f".{__version__}-", dir=base))
        cmd = [
            python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-input", "--no-deps", "--only-binary=:all:", "--target", str(staging),
            "-r", str(server_requirements()),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise LoaderError(
                "pip could not install the server-side libraries:\n" + proc.stderr[-2000:],
                "check network access to the package index, or pre-populate the "
                "directory on a machine that has it",
            )
        (staging / _MARKER).write_text(digest + "\n")
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    _install_package(target)
    _make_readable(target)
    return target


def _install_package(target: Path) -> None:
    src = server_package_dir()
    dest = target / "segmentation"
    tmp = target / ".segmentation.new"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _make_readable(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for d in dirs:
            p = Path(root, d)
            p.chmod(p.stat().st_mode | 0o555)
        for f in files:
            p = Path(root, f)
            p.chmod(p.stat().st_mode | 0o444)
    path.chmod(path.stat().st_mode | 0o555)
    path.parent.chmod(path.parent.stat().st_mode | 0o555)
