"""The ``segmentation`` command: install, status, uninstall, generate, import-real."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from segmentation_loader import install as installer
from segmentation_loader import real_data
from segmentation_loader.errors import LoaderError


def _dsn(args: argparse.Namespace) -> str:
    dsn = args.dsn or os.environ.get("DATABASE_URL")
    if not dsn:
        raise LoaderError("no database given", "pass --dsn or set DATABASE_URL")
    return dsn


def _cmd_install(args: argparse.Namespace) -> int:
    report = installer.install(
        _dsn(args), lib_base=Path(args.lib_dir) if args.lib_dir else None,
        provision_library=not args.no_library, log=print)
    print(f"segmentation {report.version} installed; server Python {report.server_python}; "
          f"library {report.lib_dir or '(not provisioned)'}; categorize_player(features) in "
          + ("C" if report.feature_scorer == "c" else "PL/Python (no native library)"))
    return 0


def _cmd_provision_library(args: argparse.Namespace) -> int:
    from segmentation_loader import library

    target = library.provision(Path(args.lib_dir) if args.lib_dir else library.DEFAULT_BASE,
                               log=print)
    print(f"server-side library ready in {target}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    print(installer.dumps(installer.status(_dsn(args))))
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    installer.uninstall(_dsn(args), drop_data=args.drop_data, log=print)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from segmentation_loader import generator

    population = generator.simulate(
        args.players, days=args.days, seed=args.seed, shape=args.shape,
        anomaly_rate=args.anomaly_rate, mixture_rate=args.mixture_rate)
    with installer.connect(_dsn(args)) as conn:
        result = generator.write_population(conn, args.game, population)
    print(installer.dumps(result))
    return 0


def _cmd_import_real(args: argparse.Namespace) -> int:
    with installer.connect(_dsn(args), autocommit=True) as conn:
        counts = real_data.load_real_dataset(
            conn, args.name, Path(args.path) if args.path else None)
    print(installer.dumps(counts))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segmentation", description=__doc__)
    parser.add_argument("--dsn", help="libpq connection string or URL (default: $DATABASE_URL)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("install", help="install or upgrade in place (idempotent)")
    p.add_argument("--lib-dir", help="base directory of the server-side Python library "
                   "(default /usr/local/lib/segmentation; sets segmentation.python_lib_dir)")
    p.add_argument("--no-library", action="store_true",
                   help="do not provision the server-side library (it is provisioned already)")
    p.set_defaults(func=_cmd_install)

    p = sub.add_parser("provision-library",
                       help="install the pinned server-side Python library (no database needed)")
    p.add_argument("--lib-dir", help="base directory (default /usr/local/lib/segmentation)")
    p.set_defaults(func=_cmd_provision_library)

    p = sub.add_parser("status", help="installed version, migrations, runtime, taxonomies")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("uninstall", help="remove functions and views (data with --drop-data)")
    p.add_argument("--drop-data", action="store_true", help="also drop all tables and data")
    p.set_defaults(func=_cmd_uninstall)

    p = sub.add_parser("generate", help="write a synthetic population into player_activity")
    p.add_argument("--game", default="demo")
    p.add_argument("--players", type=int, default=20000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", default="default", choices=["default", "whale1pct", "correlated"])
    p.add_argument("--anomaly-rate", type=float, default=0.0)
    p.add_argument("--mixture-rate", type=float, default=0.0)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("import-real",
                       help="load a real public data set into schema segmentation_data "
                            "(rules: docs/real-data.md); prints the counts as JSON")
    p.add_argument("name", choices=list(real_data.DATASETS))
    p.add_argument("--path", help="the data set's CSV file (default: under "
                   "$SEGMENTATION_SHARED_DATA or ../shared/data/real)")
    p.set_defaults(func=_cmd_import_real)
    return parser


def main(argv: list[str] | None = None) -> int:
    for arg in ("--dsn",):
        # allow --dsn after the subcommand too
        argv = list(sys.argv[1:] if argv is None else argv)
        if arg in argv and argv.index(arg) > 0:
            i = argv.index(arg)
            argv = argv[i:i + 2] + argv[:i] + argv[i + 2:]
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LoaderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
