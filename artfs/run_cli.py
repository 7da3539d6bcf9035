"""`artfs run -- CMD`: run a command as a run whose inputs are the versions it reads through
artfs mounts of the registry, and whose outputs are the versions it commits."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from typing import Any

from . import active_runs, config
from .active_runs import ActiveRun
from .errors import ArtfsError
from .registry import Registry

#: What a shell answers for a command it cannot run (not found, not executable).
CANNOT_RUN = 127
#: `artfs run` without --job-type: the SDK's `init()` default, so both kinds of runs match.
DEFAULT_JOB_TYPE = "train"


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "run", parents=[common],
        help="run a command as a run: the versions it reads through artfs mounts become its "
             "inputs, the versions it commits its outputs",
        usage="artfs run [--job-type T] [--project P] [--name N] [--config JSON] -- CMD ARGS…")
    p.add_argument("--job-type", default=DEFAULT_JOB_TYPE,
                   help=f"the run's job type, e.g. preprocess, train (default: "
                        f"{DEFAULT_JOB_TYPE})")
    p.add_argument("--name", help="a display name for the run")
    p.add_argument("--config", help="a JSON object recorded as the run's config")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS…")
    p.set_defaults(func=cmd_run)


def _config(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise ArtfsError(f"--config is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ArtfsError(f"--config must be a JSON object, not {raw!r}")
    return value


def cmd_run(args: argparse.Namespace) -> None:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ArtfsError("no command to run: give it after --, e.g. "
                         "`artfs run -- python train.py`")
    run_config = _config(args.config)
    reg = Registry(args.registry)
    record = reg.start_run(args.entity or config.default_entity(),
                           args.project or config.default_project(), args.job_type,
                           name=args.name, config=run_config)
    record.shared = True
    me = os.getpid()
    start = active_runs.process_start(me)
    assert start is not None, "/proc/self/stat is always readable"
    announced = active_runs.register(
        reg.url, ActiveRun(record.entity, record.project, record.id, me, start))
    env = {**os.environ, active_runs.RUN_ENV: f"{record.entity}/{record.project}/{record.id}",
           active_runs.REGISTRY_ENV: reg.url}
    code = CANNOT_RUN
    try:
        code = _run(command, env)
    finally:
        announced.unlink(missing_ok=True)
        reg.finish_run(record, failed=code != 0)
        reg.close()
    raise SystemExit(code)


def _run(command: list[str], env: dict[str, str]) -> int:
    """CMD's exit status (128 + N when signal N ended it, as a shell says). Ctrl-C reaches
    CMD from the terminal; SIGTERM sent to `artfs run` is passed on, and CMD decides."""
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as e:
        print(f"artfs: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
        return CANNOT_RUN

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    # The terminal sends Ctrl-C to CMD itself (same process group): not sent twice.
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGHUP: signal.signal(signal.SIGHUP, forward)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code
