"""The `artfs` command: list, inspect, put, get, alias, cache; `mount` lives in `artfs.fs`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import config, transfer
from .errors import ArtfsError, SourceError
from .names import ArtifactRef, check_name, parse_ref
from .registry import Registry, Source


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(args.registry, create=getattr(args, "create", False))


def _ref(args: argparse.Namespace, spec: str) -> ArtifactRef:
    return parse_ref(spec, entity=args.entity or config.default_entity(),
                     project=args.project or config.default_project())


# -- commands -----------------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> None:
    reg = _registry(args)
    parts = [p for p in (args.path or "").split("/") if p]
    if len(parts) > 3:
        raise ArtfsError(f"invalid path {args.path!r}: expected [ENTITY[/PROJECT[/NAME]]]")
    for i, p in enumerate(parts):
        check_name(p, ("entity", "project", "artifact name")[i])
    if not parts:
        for e in reg.entities():
            print(e)
    elif len(parts) == 1:
        for p in reg.projects(parts[0]):
            print(f"{parts[0]}/{p}")
    elif len(parts) == 2:
        for n in reg.artifacts(*parts):
            print(f"{parts[0]}/{parts[1]}/{n}  ({reg.artifact_type(*parts, n)})")
    else:
        e, p, n = parts
        if reg.artifact_type(e, p, n) is None:
            raise reg._not_found(ArtifactRef(e, p, n))
        by_version: dict[int, list[str]] = {}
        for alias, v in reg.aliases(e, p, n).items():
            by_version.setdefault(v, []).append(alias)
        for v in reg.versions(e, p, n):
            rec = reg.version(ArtifactRef(e, p, n, f"v{v}"), with_aliases=False)
            aliases = ",".join(sorted(by_version.get(v, [])))
            print(f"v{v}\t{_human(rec.size)}\t{rec.file_count} files\t{rec.created_at}\t{aliases}")


def cmd_info(args: argparse.Namespace) -> None:
    reg = _registry(args)
    ref = _ref(args, args.name)
    v = reg.version(ref)
    manifest = reg.manifest(v)
    info = {
        "registry": reg.url,
        "artifact": f"{v.entity}/{v.project}/{v.name}",
        "type": v.type,
        "version": v.label,
        "aliases": v.aliases,
        "digest": v.digest,
        "size": v.size,
        "file_count": v.file_count,
        "created_at": v.created_at,
        "description": v.description,
        "metadata": v.metadata,
        "versions": [f"v{n}" for n in reg.versions(v.entity, v.project, v.name)],
        "logged_by": v.logged_by,
        "used_by": [f"{r.entity}/{r.project}/{r.id}" for r in reg.used_by(v)],
        "files": [
            {"path": e.path, "size": e.size, "digest": e.digest, "ref": e.ref}
            for e in manifest.values()
        ],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    for key in ("registry", "artifact", "type", "version", "aliases", "versions", "digest"):
        val = info[key]
        print(f"{key + ':':13}{', '.join(val) if isinstance(val, list) else val}")
    print(f"{'size:':13}{_human(v.size)} in {v.file_count} files")
    print(f"{'created_at:':13}{v.created_at}")
    if v.description:
        print(f"{'description:':13}{v.description}")
    if v.metadata:
        print(f"{'metadata:':13}{json.dumps(v.metadata)}")
    print(f"{'logged_by:':13}{v.logged_by or '-'}")
    print(f"{'used_by:':13}{', '.join(info['used_by']) or '-'}")
    print("files:")
    for e in sorted(manifest.values(), key=lambda e: e.path):
        where = e.ref or e.digest
        print(f"  {e.path}\t{_human(e.size) if e.size is not None else '?'}\t{where}")


def cmd_put(args: argparse.Namespace) -> None:
    args.create = True
    reg = _registry(args)
    entity = args.entity or config.default_entity()
    project = args.project or config.default_project()
    sources: list[Source] = []
    for raw in args.paths:
        path = Path(raw).absolute()
        if path.is_file():
            sources.append(Source(path.name, path))
        elif path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                sources.append(Source(f.relative_to(path).as_posix(), f))
        else:
            raise SourceError(f"source {raw} does not exist")
    metadata = json.loads(args.metadata) if args.metadata else None
    run = reg.start_run(entity, project, "put")
    result = reg.log_version(
        entity, project, check_name(args.name), args.type, sources, aliases=args.alias,
        description=args.description, metadata=metadata, run=run,
    )
    reg.finish_run(run)
    state = "created" if result.created else "unchanged, same as"
    print(f"{state} {result.version.qualified} ({', '.join(result.version.aliases)})")


def cmd_get(args: argparse.Namespace) -> None:
    reg = _registry(args)
    v = reg.version(_ref(args, args.name))
    dest = transfer.download(reg, v, reg.manifest(v).values(), Path(args.dest))
    print(f"{v.qualified} → {dest}")


def cmd_alias(args: argparse.Namespace) -> None:
    reg = _registry(args)
    ref = _ref(args, args.name)
    if args.delete:
        reg.version(ArtifactRef(ref.entity, ref.project, ref.name, args.alias))
        reg.remove_alias(ref, args.alias)
        print(f"removed alias {args.alias} of {ref.entity}/{ref.project}/{ref.name}")
        return
    v = reg.set_alias(ref, args.alias)
    print(f"{args.alias} → {v.qualified}")


def cmd_cache(args: argparse.Namespace) -> None:
    reg = _registry(args)
    if args.clean:
        print(f"freed {_human(reg.cache.clean())} from {reg.cache.root}")
        return
    n, total = reg.cache.usage()
    print(f"{reg.cache.root}: {n} blobs, {_human(total)} of {_human(reg.cache.limit)}")


# -- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", help="registry location (default: $ARTFS_REGISTRY or "
                        "the embedded local registry)")
    common.add_argument("--entity", help="default entity (default: $ARTFS_ENTITY or login)")
    common.add_argument("--project", help="default project (default: $ARTFS_PROJECT)")

    parser = argparse.ArgumentParser(prog="artfs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ls", parents=[common], help="list entities, projects, artifacts, versions")
    p.add_argument("path", nargs="?", help="ENTITY[/PROJECT[/NAME]]")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("info", parents=[common], help="show a version: files, aliases, lineage")
    p.add_argument("name", help="[entity/][project/]name[:version-or-alias]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("put", parents=[common], help="log files or folders as the next version")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--name", required=True)
    p.add_argument("--type", required=True)
    p.add_argument("--alias", action="append", default=[])
    p.add_argument("--description")
    p.add_argument("--metadata", help="JSON object")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", parents=[common], help="download a version into a folder")
    p.add_argument("name")
    p.add_argument("dest")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("alias", parents=[common], help="point an alias at a version")
    p.add_argument("name", help="name:vN")
    p.add_argument("alias")
    p.add_argument("--delete", action="store_true", help="remove the alias instead")
    p.set_defaults(func=cmd_alias)

    p = sub.add_parser("cache", parents=[common], help="show or empty the local cache")
    p.add_argument("--clean", action="store_true")
    p.set_defaults(func=cmd_cache)

    from .fs import cli as fs_cli

    fs_cli.add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ArtfsError as e:
        print(f"artfs: error: {e}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as e:
        print(f"artfs: error: --metadata is not valid JSON: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
