"""Provision the version-pinned library directory for the server's Python.

Layout (as in Timescale pgai): ``<base>/<version>/`` holds numpy, scipy,
scikit-learn and the ``segmentation`` package, installed with pip ``--target``
so nothing touches the system or user site-packages. PL/Python functions put
exactly that directory first on ``sys.path`` (see ``sql/010_bootstrap.sql``).
Next to them, ``segmentation_native.so``: categorize_player(game_id, features) in C
(``native/categorize_features.c``), built when the server headers are installed.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from segmentation import __version__

from segmentation_loader.errors import LoaderError
from segmentation_loader.resources import native_source, server_package_dir, server_requirements

DEFAULT_BASE = Path("/usr/local/lib/segmentation")
_MARKER = ".requirements.sha256"
NATIVE_LIBRARY = "segmentation_native.so"
_NATIVE_MARKER = ".native.sha256"
# PostgreSQL's own code generation rules for server code (-fwrapv, no strict aliasing);
# no -ffast-math: the C scorer must compute what the Python one does.
_NATIVE_CFLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-Wmissing-prototypes",
                  "-fno-strict-aliasing", "-fwrapv", "-fexcess-precision=standard"]


def library_dir(base: Path) -> Path:
    return base / __version__


def _requirements_digest() -> str:
    text = server_requirements().read_bytes()
    tag = f"{sys.version_info.major}.{sys.version_info.minor}".encode()
    return hashlib.sha256(text + tag).hexdigest()


def provision(base: Path, *, python: str = sys.executable, pg_major: int | None = None,
              log=print) -> Path:
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
    build_native(target, pg_major=pg_major, log=log)
    _make_readable(target)
    return target


def _pg_config(pg_major: int | None) -> str | None:
    if os.environ.get("PG_CONFIG"):
        return os.environ["PG_CONFIG"]
    major = pg_major or int(os.environ.get("PG_MAJOR", "15"))
    candidate = Path(f"/usr/lib/postgresql/{major}/bin/pg_config")
    return str(candidate) if candidate.exists() else shutil.which("pg_config")


def build_native(target: Path, *, pg_major: int | None = None, log=print) -> Path | None:
    """Compile ``native/categorize_features.c`` into ``target``; None when it cannot be.

    Needs a C compiler and the server headers of the server's major version
    (``postgresql-server-dev-15``); without them the install goes on and
    categorize_player(game_id, features) stays in PL/Python (sql/210_native_scorer.sql
    says so). Rebuilt only when the source, the flags or the headers changed; the new
    file replaces the old one by rename, so a backend that has the old one loaded keeps
    its copy.
    """
    pg_config = _pg_config(pg_major)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    include = None
    if pg_config:
        proc = subprocess.run([pg_config, "--includedir-server"], capture_output=True,
                              text=True, check=False)
        include = Path(proc.stdout.strip()) if proc.returncode == 0 else None
    if cc is None or include is None or not (include / "postgres.h").exists():
        missing = "a C compiler" if cc is None else "the PostgreSQL server headers"
        log(f"native scorer not built: {missing} not found (install gcc and "
            f"postgresql-server-dev-{pg_major or 15}); categorize_player(game_id, features) "
            "will run in PL/Python")
        return None
    source = native_source()
    if not source.exists():
        log(f"native scorer not built: no {source}; categorize_player(game_id, features) "
            "will run in PL/Python")
        return None
    cmd = [*shlex.split(cc), *_NATIVE_CFLAGS, f"-I{include}",
           f'-DSEGMENTATION_VERSION="{__version__}"']
    out = target / NATIVE_LIBRARY
    digest = hashlib.sha256(source.read_bytes() + " ".join(cmd).encode()
                            + (include / "pg_config.h").read_bytes()).hexdigest()
    marker = target / _NATIVE_MARKER
    if out.exists() and marker.exists() and marker.read_text().strip() == digest:
        return out
    staging = target / f".{NATIVE_LIBRARY}.new"
    proc = subprocess.run([*cmd, "-o", str(staging), str(source)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        # No library from an older source is left to be installed in its place.
        for stale in (staging, out, marker):
            stale.unlink(missing_ok=True)
        log("native scorer not built: the compiler failed (please report it as a bug); "
            "categorize_player(game_id, features) will run in PL/Python\n"
            + proc.stderr[-2000:])
        return None
    if proc.stderr.strip():
        log(proc.stderr[-2000:])
    os.replace(staging, out)
    marker.write_text(digest + "\n")
    log(f"built {out}")
    return out


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
