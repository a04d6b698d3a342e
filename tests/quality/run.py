"""`make quality`: measure the real system against planted archetypes and print the bars.

Creates a scratch database ``seg_quality_<pid>`` on the server (DATABASE_URL, else the
project cluster on SEG_PGPORT), installs the system with the real loader, runs the suite on
every shape and drops the database. Exit status 1 when a bar fails. See docs/quality.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from segmentation_loader.generator import SHAPES

from tests.quality.suite import (
    SuiteConfig,
    failures,
    format_table,
    run_suite,
    scratch_database,
    server_url,
)


def _shapes(text: str) -> tuple[str, ...]:
    shapes = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in shapes if s not in SHAPES]
    if not shapes or unknown:
        raise argparse.ArgumentTypeError(f"shapes are a comma list of {', '.join(SHAPES)}")
    return shapes


def main(argv: list[str] | None = None) -> int:
    defaults = SuiteConfig()
    parser = argparse.ArgumentParser(prog="make quality", description=__doc__.splitlines()[0])
    parser.add_argument("--players", type=int, default=defaults.players,
                        help="players per shape (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--shapes", type=_shapes, default=defaults.shapes,
                        help="comma list (default %s)" % ",".join(SHAPES))
    parser.add_argument("--resamples", type=int, default=defaults.resamples,
                        help="end-to-end bootstrap recalibrations per shape (default %(default)s)")
    parser.add_argument("--mixture-rate", type=float, default=defaults.mixture_rate,
                        help="share of blended players in the soft-membership game; 0 skips it")
    parser.add_argument("--jobs", type=int, default=2,
                        help="shapes measured at once, one server backend each (default "
                             "%(default)s, for a 2-core machine)")
    parser.add_argument("--keep-db", action="store_true",
                        help="keep the scratch database for inspection")
    args = parser.parse_args(argv)
    if args.players < 1000:
        parser.error("--players must be at least 1000 (a bootstrap resample needs >= 500 "
                     "distinct players to calibrate)")
    config = SuiteConfig(players=args.players, seed=args.seed, shapes=args.shapes,
                         resamples=args.resamples, mixture_rate=args.mixture_rate)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    name = f"seg_quality_{os.getpid()}"
    with scratch_database(server_url(), name, keep=args.keep_db, log=log) as dsn:
        reports = run_suite(dsn, config, log, jobs=args.jobs)
    elapsed = time.perf_counter() - t0
    print()
    print(f"Quality suite: {config.players} players x {config.days} days per shape, "
          f"seed {config.seed}, {config.resamples} bootstrap recalibrations, "
          f"{config.mixture_rate:.0%} mixed players in the soft-membership game")
    print()
    print(format_table(reports))
    print()
    print("timings (s): " + "; ".join(
        f"{r.shape} {r.timings['total']:.0f} (calibrate {r.timings.get('calibrate', 0):.0f},"
        f" categorize_all {r.timings.get('categorize_all', 0):.0f},"
        f" load {r.timings.get('load', 0):.0f})" for r in reports))
    failed = failures(reports)
    print(f"{'FAIL' if failed else 'PASS'}: {len(failed)} bar(s) failed; total {elapsed:.0f}s"
          + (f"; database {name} kept" if args.keep_db else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
