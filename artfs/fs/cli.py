"""`artfs mount`, `artfs umount`, and `artfs info PATH` for a path inside a mount."""

from __future__ import annotations

import argparse
import errno
import json
import os
from pathlib import Path
from typing import Any

from .. import config
from ..errors import ArtfsError
from .ops import XATTR_PREFIX


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the filesystem commands on the main parser."""
    p = sub.add_parser("mount", parents=[common],
                       help="show the registry as a read-only directory tree")
    p.add_argument("mountpoint", help="an empty folder")
    p.add_argument("--foreground", "-f", action="store_true",
                   help="stay in the foreground and log to the terminal")
    p.add_argument("--read-only", action="store_true",
                   help="mount read-only as a whole (no staging folders)")
    p.add_argument("--cache-size", help="size of the local blob cache, e.g. 20G")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users see the mount (needs user_allow_other in "
                        "/etc/fuse.conf for non-root users)")
    p.add_argument("--debug", action="store_true", help="log every FUSE request")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount an artfs mount")
    p.add_argument("mountpoint")
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


def cmd_mount(args: argparse.Namespace) -> None:
    from .mount import MountOptions, mount

    opts = MountOptions(
        mountpoint=Path(args.mountpoint).expanduser().absolute(),
        registry=args.registry,
        cache_size=config.parse_size(args.cache_size) if args.cache_size else None,
        read_only=args.read_only,
        allow_other=args.allow_other,
        debug=args.debug,
    )
    if mount(opts, foreground=args.foreground):
        raise SystemExit(1)


def cmd_umount(args: argparse.Namespace) -> None:
    from .mount import umount

    umount(Path(args.mountpoint).expanduser().absolute(), lazy=args.lazy)


def mounted_facts(path: str) -> dict[str, Any] | None:
    """The facts an artfs mount publishes for `path`, or None when it is not inside one."""
    if not os.path.lexists(path):
        return None
    try:
        raw = os.getxattr(path, XATTR_PREFIX + "info")
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise ArtfsError(f"cannot read the facts of {path}: {e}") from e
    return json.loads(raw)


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
