"""`artfs run -- CMD`: run a command as a run whose inputs are the versions it reads through
artfs mounts of the registry, and whose outputs are the versions it commits; `artfs lineage`
shows the graph those runs make."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from . import active_runs, config
from .active_runs import ActiveRun
from .errors import ArtfsError
from .names import parse_ref
from .records import decode
from .registry import Registry, RunRecord, Version

#: What a shell answers for a command it cannot run (not found, not executable).
CANNOT_RUN = 127
#: `artfs run` without --job-type: the SDK's `init()` default, so both kinds of runs match.
DEFAULT_JOB_TYPE = "train"
#: `artfs lineage` follows this many runs each way unless told: a pipeline's usual reach.
DEFAULT_DEPTH = 3
INDENT = "  "


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
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS…",
                   help="the command to run, after --; its exit status is artfs run's")
    p.set_defaults(func=cmd_run)
    add_lineage_command(sub, common)


def _config(raw: str | None) -> dict[str, Any]:
    return {} if raw is None else decode(raw, "--config", ArtfsError)


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
    # The run's registry becomes CMD's default, so SDK code in it joins the run.
    env = {**os.environ, active_runs.RUN_ENV: f"{record.entity}/{record.project}/{record.id}",
           active_runs.REGISTRY_ENV: reg.url, "ARTFS_REGISTRY": reg.url}
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


def add_lineage_command(sub: argparse._SubParsersAction,
                        common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("lineage", parents=[common],
                       help="show where a version came from and what used it, as a tree")
    p.add_argument("name", help="[entity/][project/]name[:version-or-alias]")
    p.add_argument("--up", type=int, default=DEFAULT_DEPTH, metavar="N",
                   help=f"runs to follow towards the inputs (default: {DEFAULT_DEPTH})")
    p.add_argument("--down", type=int, default=DEFAULT_DEPTH, metavar="N",
                   help=f"runs to follow towards the users (default: {DEFAULT_DEPTH})")
    p.set_defaults(func=cmd_lineage)


def cmd_lineage(args: argparse.Namespace) -> None:
    if args.up < 0 or args.down < 0:
        raise ArtfsError(f"--up and --down take a number of runs ≥ 0, not "
                         f"{min(args.up, args.down)}")
    reg = Registry(args.registry)
    try:
        version = reg.version(parse_ref(args.name,
                                        entity=args.entity or config.default_entity(),
                                        project=args.project or config.default_project()),
                              with_aliases=False, include_deleted=True)
        print(version.qualified + _deleted(version))
        graph = LineageGraph(reg)
        for line in graph.up(version, args.up, 1):
            print(line)
        for line in graph.down(version, args.down, 1):
            print(line)
    finally:
        reg.close()


class LineageGraph:
    """Walks runs and versions; each run is expanded once per direction (a version a run
    both logged and used would otherwise loop)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._seen_up: set[str] = set()
        self._seen_down: set[str] = set()

    def _run(self, path: str) -> RunRecord | None:
        entity, project, run_id = path.split("/")
        return self.registry.find_run(entity, project, run_id)

    def _version(self, qualified: str) -> Version:
        entity, project, _ = qualified.split("/", 2)
        return self.registry.version(parse_ref(qualified, entity=entity, project=project),
                                     with_aliases=False, include_deleted=True)

    def up(self, version: Version, depth: int, level: int) -> Iterator[str]:
        """version ← the run that logged it ← that run's inputs ← …"""
        if depth == 0 or version.logged_by is None:
            return
        pad = INDENT * level
        run = self._run(version.logged_by)
        if run is None:
            yield f"{pad}made by run {version.logged_by} (record missing)"
            return
        yield f"{pad}made by run {_describe(run)}"
        if version.logged_by in self._seen_up:
            return
        self._seen_up.add(version.logged_by)
        for qualified in run.inputs:
            used = self._version(qualified)
            yield f"{pad}{INDENT}from {qualified}{_deleted(used)}"
            yield from self.up(used, depth - 1, level + 2)

    def down(self, version: Version, depth: int, level: int) -> Iterator[str]:
        """version → the runs that used it → what they logged → …"""
        if depth == 0:
            return
        pad = INDENT * level
        for run in self.registry.used_by(version):
            path = f"{run.entity}/{run.project}/{run.id}"
            yield f"{pad}used by run {_describe(run)}"
            if path in self._seen_down:
                continue
            self._seen_down.add(path)
            for qualified in run.outputs:
                made = self._version(qualified)
                yield f"{pad}{INDENT}made {qualified}{_deleted(made)}"
                yield from self.down(made, depth - 1, level + 2)


def _deleted(version: Version) -> str:
    return (f" (deleted at {version.deleted_at} by {version.deleted_by})"
            if version.deleted else "")


def _describe(run: RunRecord) -> str:
    name = f" {run.name!r}" if run.name else ""
    return f"{run.entity}/{run.project}/{run.id}{name} ({run.job_type}, {run.state})"
