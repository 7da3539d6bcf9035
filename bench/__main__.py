"""`make bench`: run every benchmark module and print one table of medians and ratios.

`python -m bench [--quick] [--check] [module ...]`; modules are bench/bench_*.py with
`run(quick)`. `--check` exits non-zero when a row misses its target: for a person judging a
change on this machine, not for CI (timings on shared machines vary too much to gate on).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

import bench

from .common import Row, print_table


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs")
    parser.add_argument("--check", action="store_true",
                        help="exit non-zero when a ratio misses its target")
    parser.add_argument("modules", nargs="*", help="e.g. core mount s3 (default: all)")
    args = parser.parse_args()
    names = [m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")]
    if args.modules:
        names = [n for n in names if n.removeprefix("bench_") in args.modules]
    rows: list[Row] = []
    failed = []
    for name in sorted(names):
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            module_rows = importlib.import_module(f"bench.{name}").run(args.quick)
            print_table(module_rows)
            sys.stdout.flush()
            rows.extend(module_rows)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
    print("\n== all")
    print_table(rows)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    missed = [r for r in rows if r.meets_target() is False]
    if args.check and missed:
        print("\n== missed targets")
        print_table(missed)
    return 1 if failed or (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
