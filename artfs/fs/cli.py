"""`artfs mount`, `artfs umount`, `artfs info PATH` for a path inside a mount, and the staging
commands `artfs commit`, `diff`, `discard` and `stage`.

The staging commands that change a staging folder (commit, discard, stage) are carried out by
the mount process, which can wait for writers and refresh the kernel's view: the command sends
its request as an extended attribute of the artifact folder and reads the reply from another.
`diff` only reads, so it reads the staging area's files directly.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from .. import config, progress, staging
from ..active_runs import commit_lineage
from ..errors import ArtfsError, Cancelled
from ..interrupts import Interrupted, cancel_on_signal
from .protocol import CONTROL_XATTR, PROGRESS_XATTR, RESULT_XATTR, STAGING_NAME, XATTR_PREFIX

#: How often `artfs commit` asks the mount how far the commit has got.
PROGRESS_POLL_S = 0.2


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the filesystem commands on the main parser."""
    p = sub.add_parser("mount", parents=[common],
                       help="show the registry as a folder tree: versions read-only, each "
                       "artifact's @staging writable")
    p.add_argument("mountpoint", help="an empty folder")
    p.add_argument("--foreground", "-f", action="store_true",
                   help="stay in the foreground and log to the terminal")
    p.add_argument("--read-only", action="store_true",
                   help="mount read-only as a whole (no staging folders)")
    p.add_argument("--cache-size", help="size of the local blob cache, e.g. 20G "
                   "(default: $ARTFS_CACHE_SIZE, else 10G)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="this machine's blob cache (default: $ARTFS_CACHE_DIR, else "
                   "~/.cache/artfs)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="staged files, mount logs (default: $ARTFS_STATE_DIR, else "
                   "~/.local/state/artfs)")
    p.add_argument("--log-file", metavar="FILE",
                   help="the mount's log (default: a file per mount point in the state dir)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users see the mount (needs user_allow_other in "
                        "/etc/fuse.conf for non-root users)")
    p.add_argument("--debug", action="store_true", help="log every FUSE request")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount an artfs mount")
    p.add_argument("mountpoint", help="the folder it is mounted on")
    p.add_argument("--lazy", "-z", action="store_true",
                   help="detach now even if busy; finish when the last file is closed")
    p.set_defaults(func=cmd_umount)

    # `artfs info` takes an artifact name; given a path inside a mount it reads the facts the
    # mount publishes as extended attributes instead, so it needs no registry access.
    info = sub.choices["info"]
    by_name = info.get_default("func")

    def info_name_or_path(args: argparse.Namespace) -> None:
        facts = mounted_facts(args.name)
        if facts is None:
            by_name(args)
        else:
            print_facts(facts, as_json=args.json)

    info.set_defaults(func=info_name_or_path)

    p = sub.add_parser("commit", help="turn an artifact's @staging folder into its next version")
    p.add_argument("path", metavar="PATH", help="artifact folder in a mount, or its @staging")
    p.add_argument("--alias", action="append", default=[],
                   help="alias to point at the new version; repeat for several")
    p.add_argument("--type", help="artifact type (required for a new artifact)")
    p.add_argument("--description", help="text describing the version")
    p.add_argument("--metadata", help="a JSON object stored with the version")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar (there is none when stderr is not a terminal)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for files open for writing when the commit starts "
                        "(default: refuse them after 1 s)")
    p.add_argument("--force", action="store_true",
                   help="commit files that were being written when the mount stopped (shown "
                        "as A! or M! by `artfs diff`) as they are")
    p.add_argument("--input", action="append", default=[], metavar="NAME:VER",
                   help="a version the new one was made from (its lineage); repeat for several")
    p.add_argument("--job-type", default="commit", help="job type of the commit's run "
                   "(default: commit; inside `artfs run`, that run is used)")
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("diff", help="show files added (A), changed (M), removed (D) in staging")
    p.add_argument("path", metavar="PATH", help="artifact folder in a mount, or its @staging")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("discard", help="drop staged changes: staging shows the latest version")
    p.add_argument("path", metavar="PATH", help="artifact folder in a mount, or its @staging")
    p.set_defaults(func=cmd_discard)

    p = sub.add_parser("stage", help="restart an artifact's staging folder")
    p.add_argument("path", metavar="PATH", help="artifact folder in a mount, or its @staging")
    p.add_argument("--empty", action="store_true",
                   help="start empty instead of from the latest version")
    p.set_defaults(func=cmd_stage)


def cmd_mount(args: argparse.Namespace) -> None:
    from .mount import MountOptions, mount

    # The mount process and everything it calls read these two from the environment.
    for option, variable in ((args.cache_dir, "ARTFS_CACHE_DIR"),
                             (args.state_dir, "ARTFS_STATE_DIR")):
        if option:
            os.environ[variable] = str(Path(option).expanduser().absolute())
    opts = MountOptions(
        mountpoint=Path(args.mountpoint).expanduser().absolute(),
        registry=args.registry,
        cache_size=config.parse_size(args.cache_size) if args.cache_size else None,
        read_only=args.read_only,
        allow_other=args.allow_other,
        debug=args.debug,
        log_file=Path(args.log_file).expanduser().absolute() if args.log_file else None,
    )
    if mount(opts, foreground=args.foreground):
        raise SystemExit(1)


def cmd_umount(args: argparse.Namespace) -> None:
    from .mount import umount

    umount(Path(args.mountpoint).expanduser().absolute(), lazy=args.lazy)


def mounted_facts(path: str) -> dict[str, Any] | None:
    """The facts an artfs mount publishes for `path`, or None when it is not inside one."""
    try:
        if not os.path.lexists(path):
            _check_alive(path)
            return None
        raw = os.getxattr(path, XATTR_PREFIX + "info")
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        _check_alive(path)
        raise ArtfsError(f"cannot read the facts of {path}: {e}") from e
    return json.loads(raw)


def _check_alive(path: str) -> None:
    dead = dead_mount(path)
    if dead is not None:
        raise ArtfsError(
            f"the mount at {dead} is not running (ENOTCONN: its process ended); staged files "
            f"are kept on local disk: mount it again with `artfs mount {dead}` (it cleans up "
            "the stale mount point), then retry")


def dead_mount(path: str) -> Path | None:
    """The mount point above `path` whose FUSE process is gone (it answers ENOTCONN). Asked
    with statfs, which the kernel always sends on: `stat` may answer from its cache."""
    here = Path(path).expanduser().absolute()
    for folder in [*reversed(here.parents), here]:
        try:
            os.statvfs(folder)
        except OSError as e:
            return folder if e.errno == errno.ENOTCONN else None
    return None


def print_facts(facts: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        print(f"{key + ':':13}{'-' if value is None or value == '' else value}")


def staged_artifact(path: str) -> tuple[Path, dict[str, Any]]:
    """The artifact folder for PATH (the folder or its @staging) and its published facts."""
    folder = Path(path).expanduser().absolute()
    if folder.name == STAGING_NAME:
        folder = folder.parent
    facts = mounted_facts(str(folder))
    if facts is None or "versions" not in facts:
        raise ArtfsError(f"{path} is not an artifact folder in an artfs mount; give "
                         f"MOUNT/<entity>/<project>/<name> or its {STAGING_NAME} folder")
    return folder, facts


def send(folder: Path, request: dict[str, Any], *, keep_id: bool = False) -> dict[str, Any]:
    """Have the mount run a staging command; its reply, or ArtfsError with its message."""
    if not keep_id:
        request["id"] = uuid.uuid4().hex
    try:
        os.setxattr(folder, CONTROL_XATTR, json.dumps(request).encode())
        reply = json.loads(os.getxattr(folder, RESULT_XATTR + request["id"]))
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            raise ArtfsError(
                f"the mount serving {folder} ended during `{request['op']}`; staged files "
                "are kept on local disk: mount again and check with `artfs diff`") from e
        raise ArtfsError(f"{request['op']} of {folder} failed: {e}") from e
    if not reply.get("ok"):
        raise (Cancelled if reply.get("cancelled") else ArtfsError)(reply.get("error") or "failed")
    return reply


def send_cancellable(folder: Path, request: dict[str, Any], *,
                     quiet: bool = False) -> tuple[dict[str, Any], bool]:
    """`send`, but Ctrl-C or SIGTERM asks the mount to cancel the command: its reply (or
    Cancelled), and whether the user interrupted it (then too late to cancel). Meanwhile a
    progress bar shows the bytes the mount has moved, on a terminal unless `quiet`.

    The request waits in a thread: the kernel holds this process in the xattr call until the
    mount answers. The cancel goes to the @staging folder through a descriptor opened before,
    because the call in flight locks the artifact folder."""
    request["id"] = uuid.uuid4().hex
    staging_fd = os.open(folder / STAGING_NAME, os.O_RDONLY | os.O_DIRECTORY)
    answer: dict[str, Any] = {}
    done = threading.Event()

    def wait_for_reply() -> None:
        try:
            answer["reply"] = send(folder, request, keep_id=True)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            answer["error"] = e
        finally:
            done.set()

    def cancel() -> None:
        message = {"op": "cancel", "target": request["id"], "id": uuid.uuid4().hex}
        os.setxattr(staging_fd, CONTROL_XATTR, json.dumps(message).encode())

    def wait_showing(bar: progress.Progress) -> None:
        shown = 0
        while not done.wait(PROGRESS_POLL_S):
            try:
                state = json.loads(os.getxattr(staging_fd, PROGRESS_XATTR + request["id"]))
            except OSError:  # not started yet, or already over
                continue
            if state["total"] != bar.total:
                bar.set_total(state["total"])
            bar.done(state["done"] - shown)
            shown = state["done"]

    threading.Thread(target=wait_for_reply, daemon=True).start()
    interrupted = False
    try:
        with progress.bar(0, f"{request['op']} {folder.name}", quiet=quiet) as bar:
            try:
                with cancel_on_signal(cancel, f"cancelling the {request['op']}"):
                    wait_showing(bar)
            except Interrupted:
                interrupted = True
                wait_showing(bar)  # the mount answers at once, or at its point of no return
    finally:
        os.close(staging_fd)
    if "error" in answer:
        raise answer["error"]
    return answer["reply"], interrupted


def cmd_commit(args: argparse.Namespace) -> None:
    folder, _ = staged_artifact(args.path)
    metadata = json.loads(args.metadata) if args.metadata else None
    reply, interrupted = send_cancellable(
        folder, {"op": "commit", "aliases": args.alias, "type": args.type,
                 "description": args.description, "metadata": metadata, "wait": args.wait,
                 "force": args.force, **commit_lineage(args.input, args.job_type)},
        quiet=args.quiet)
    print(reply["message"] + (" (too late to cancel)" if interrupted else ""))


def cmd_diff(args: argparse.Namespace) -> None:
    folder, facts = staged_artifact(args.path)
    entity, project, name = facts["artifact"].split("/")
    root = staging.registry_root(facts["registry"]) / entity / project / name
    if not (root / "index.db").exists():
        print(f"no staged changes: the staging folder of {facts['artifact']} is not in use")
        return
    # Have the mount open the area first: after a crash its first open publishes the drafts
    # the crash cut short (flagged), which this command must show.
    mounted_facts(str(folder / STAGING_NAME))
    area = staging.Staging(facts["registry"], entity, project, name)
    try:
        changes = area.diff()
        base = area.base_version
    finally:
        area.close()
    against = f"v{base}" if base is not None else "nothing (new artifact)"
    if not changes:
        print(f"no changes against {against}")
        return
    for line in changes.lines():
        print(line)
    print(f"{len(changes.added)} added, {len(changes.changed)} changed, "
          f"{len(changes.removed)} removed against {against}")


def cmd_discard(args: argparse.Namespace) -> None:
    folder, _ = staged_artifact(args.path)
    print(send(folder, {"op": "discard"})["message"])


def cmd_stage(args: argparse.Namespace) -> None:
    folder, _ = staged_artifact(args.path)
    print(send(folder, {"op": "empty" if args.empty else "discard"})["message"])
