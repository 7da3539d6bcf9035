"""artfs: versioned ML artifacts as ordinary files.

Log files as versions of named artifacts (put), read them back (get, ls, info), move aliases,
or mount the whole registry as a folder tree whose @staging folders turn into new versions
with `artfs commit`. Set ARTFS_DEBUG=1 to see the traceback behind an error."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import config, progress, transfer
from .cache import LocalCache
from .errors import ArtfsError, Cancelled, DestinationNotEmpty, InvalidFilter, SourceError
from .gc import Collector
from .hashing import stat_key
from .interrupts import Interrupted, cancel_on_signal
from .listing import VersionListing
from .manifest import Manifest
from .names import ArtifactRef, check_alias, check_name, parse_ref
from .registry import Registry, Source, Version, check_metadata, check_unique, init_registry
from .retention import parse_duration
from .units import human


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 file`, `2 files`: every count a user reads goes through here."""
    return f"{n} {noun}" if n == 1 else f"{n:,} {plural or noun + 's'}"


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(args.registry)


def _ref(args: argparse.Namespace, spec: str) -> ArtifactRef:
    return parse_ref(spec, entity=args.entity or config.default_entity(),
                     project=args.project or config.default_project())


# -- commands -----------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> None:
    url, created = init_registry(args.url or args.registry)
    print(f"created an empty artfs registry at {url}" if created
          else f"{url} is already an artfs registry; nothing changed")


def cmd_ls(args: argparse.Namespace) -> None:
    reg = _registry(args)
    parts = [p for p in (args.path or "").split("/") if p]
    if len(parts) > 3:
        raise ArtfsError(f"invalid path {args.path!r}: expected [ENTITY[/PROJECT[/NAME]]]")
    for i, p in enumerate(parts):
        check_name(p, ("entity", "project", "artifact name")[i])
    if args.filter is not None and len(parts) != 3:
        raise InvalidFilter("--filter lists the versions of one artifact: give ENTITY/PROJECT/NAME")
    if not parts:
        for e in reg.entities():
            print(e)
    elif len(parts) == 1:
        for p in reg.projects(parts[0]):
            print(f"{parts[0]}/{p}")
    elif len(parts) == 2:
        for n in reg.artifacts(*parts):
            print(f"{parts[0]}/{parts[1]}/{n}  ({reg.artifact_type(*parts, n)})")
    elif args.filter is not None:
        _ls_filtered(reg, *parts, args.filter)
    else:
        e, p, n = parts
        if reg.artifact_type(e, p, n) is None:
            raise reg.not_found(ArtifactRef(e, p, n))
        by_version: dict[int, list[str]] = {}
        for alias, v in reg.aliases(e, p, n).items():
            by_version.setdefault(v, []).append(alias)
        for v in reg.versions(e, p, n):
            rec = reg.version(ArtifactRef(e, p, n, f"v{v}"), with_aliases=False)
            aliases = ",".join(sorted(by_version.get(v, [])))
            print(f"v{v}\t{human(rec.size)}\t{_count(rec.file_count, 'file')}\t"
                  f"{rec.created_at}\t{aliases}")


def _ls_filtered(reg: Registry, e: str, p: str, n: str, raw: str) -> None:
    """`ls NAME --filter JSON`: the versions matching a filter (artfs/filters.py), oldest first."""
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InvalidFilter(f"--filter is not valid JSON: {err}") from None
    for rec in sorted(VersionListing(reg, e, p, n, filters=spec, per_page=1000),
                      key=lambda v: v.version):
        print(f"{rec.label}\t{human(rec.size)}\t{_count(rec.file_count, 'file')}\t"
              f"{rec.created_at}\t{','.join(rec.aliases)}")


def cmd_info(args: argparse.Namespace) -> None:
    reg = _registry(args)
    ref = _ref(args, args.name)
    v = reg.version(ref)
    manifest = reg.manifest(v)
    info = {
        "registry": reg.url,
        "artifact": f"{v.entity}/{v.project}/{v.name}",
        "version": v.label,
        **v.facts(),
        "versions": [f"v{n}" for n in reg.versions(v.entity, v.project, v.name)],
        "inputs": _inputs(reg, v),
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
    print(f"{'size:':13}{human(v.size)} in {_count(v.file_count, 'file')}")
    print(f"{'created_at:':13}{v.created_at}")
    if v.description:
        print(f"{'description:':13}{v.description}")
    if v.metadata:
        print(f"{'metadata:':13}{json.dumps(v.metadata)}")
    print(f"{'logged_by:':13}{v.logged_by or '-'}")
    print(f"{'inputs:':13}{', '.join(info['inputs']) or '-'}")
    print(f"{'used_by:':13}{', '.join(info['used_by']) or '-'}")
    print("files:")
    for e in sorted(manifest.values(), key=lambda e: e.path):
        where = e.ref or e.digest
        print(f"  {e.path}\t{human(e.size) if e.size is not None else '?'}\t{where}")


def _inputs(reg: Registry, v: Version) -> list[str]:
    """The versions the run that logged `v` used (`artfs run`, `commit --input`, the SDK)."""
    if v.logged_by is None:
        return []
    run = reg.find_run(*v.logged_by.split("/"))
    return list(run.inputs) if run is not None else []


def _put_sources(raw: str) -> list[Source]:
    """A file becomes one entry; a folder's files keep their paths below it (like add_dir).

    Each file is stat'ed once, here, and that stat is what the hash cache is asked about: an
    unchanged tree costs one `stat` per file (os.scandir knows files from folders unasked).
    """
    path = Path(raw).absolute()
    if path.is_file():
        return [Source(path.name, path, stat_key(path.stat()))]
    if path.is_dir():
        return sorted(_walk_sources(str(path), ""), key=lambda s: s.path)
    if path.is_symlink() or not path.exists():
        raise SourceError(f"source {raw} does not exist")
    raise SourceError(f"source {raw} is not a regular file or folder")


def _walk_sources(folder: str, prefix: str) -> Iterator[Source]:
    """The files below `folder`; a link to a folder is left out and not followed."""
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise SourceError(f"folder {folder} cannot be listed: {e.strerror}") from e
    for entry in entries:
        rel = prefix + entry.name
        try:
            if entry.is_file():
                yield Source(rel, entry.path, stat_key(entry.stat()))
                continue
            if entry.is_dir():
                if not entry.is_symlink():
                    yield from _walk_sources(entry.path, rel + "/")
                continue
        except FileNotFoundError:
            pass
        raise SourceError(f"source {entry.path} is not a regular file (dangling symlink or FIFO?)")


def cmd_put(args: argparse.Namespace) -> None:
    entity = check_name(args.entity or config.default_entity(), "entity")
    project = check_name(args.project or config.default_project(), "project")
    name = check_name(args.name)
    check_name(args.type, "artifact type")
    aliases = [check_alias(a) for a in args.alias]
    metadata = json.loads(args.metadata) if args.metadata else None
    check_metadata(name, args.description, metadata)
    sources = [s for raw in args.paths for s in _put_sources(raw)]
    check_unique(f"{entity}/{project}/{name}", sources, [])
    reg = _registry(args)
    reg.check_type(entity, project, name, args.type)
    run = reg.start_run(entity, project, "put")
    total = sum(s.expect[0] for s in sources if s.expect is not None)
    try:
        with (progress.bar(total, f"{entity}/{project}/{name}", quiet=args.quiet),
              cancel_on_signal(reg.store.cancel_transfers, "stopping the transfers in flight")):
            result = reg.log_version(
                entity, project, name, args.type, sources, aliases=aliases,
                description=args.description, metadata=metadata, run=run,
            )
    except BaseException:
        reg.finish_run(run, failed=True)
        raise
    reg.finish_run(run)
    state = "created" if result.created else "unchanged, same as"
    print(f"{state} {result.version.qualified} ({', '.join(result.version.aliases)})")


def _listing(paths: list[str], most: int = 5) -> str:
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most:,} more" if len(paths) > most else "")


def _check_destination(reg: Registry, v: Version, manifest: Manifest, dest: Path,
                       args: argparse.Namespace) -> None:
    """Downloading into a folder holding other files must not silently replace or mix."""
    if args.force:
        return
    found = transfer.destination_conflicts(reg, manifest.values(), dest)
    problems = []
    if found.overwritten:
        problems.append(f"{_count(len(found.overwritten), 'file')} would be overwritten "
                        f"({_listing(found.overwritten)})")
    if found.foreign and not args.merge:
        problems.append(f"{_count(len(found.foreign), 'file')} not in {v.qualified} would be "
                        f"mixed in ({_listing(found.foreign)})")
    if problems:
        remedy = "--force to overwrite" if found.overwritten else "--merge to add to them"
        raise DestinationNotEmpty(f"{dest} is not empty: {'; '.join(problems)}; use {remedy}, "
                                  "or choose an empty folder")


def cmd_get(args: argparse.Namespace) -> None:
    reg = _registry(args)
    v = reg.version(_ref(args, args.name))
    manifest = reg.manifest(v)
    _check_destination(reg, v, manifest, Path(args.dest), args)
    dest = transfer.download(reg, v, manifest.values(), Path(args.dest), quiet=args.quiet)
    print(f"{v.qualified} → {dest}")


def cmd_alias(args: argparse.Namespace) -> None:
    reg = _registry(args)
    ref = _ref(args, args.name)
    if args.delete:
        check_alias(args.alias)
        reg.version(ArtifactRef(ref.entity, ref.project, ref.name, args.alias))
        reg.remove_alias(ref, args.alias)
        print(f"removed alias {args.alias} of {ref.entity}/{ref.project}/{ref.name}")
        return
    v = reg.set_alias(ref, args.alias)
    print(f"{args.alias} → {v.qualified}")


def cmd_delete(args: argparse.Namespace) -> None:
    reg = _registry(args)
    ref = _ref(args, args.name)
    if args.all:
        if ":" in args.name:
            raise ArtfsError(f"--all deletes a whole artifact: give ENTITY/PROJECT/NAME without "
                             f"a version, not {args.name!r}")
        if reg.artifact_type(ref.entity, ref.project, ref.name) is None:
            raise reg.not_found(ref)
        gone = reg.delete_artifact(ref.entity, ref.project, ref.name)
        print(f"deleted {_count(len(gone), 'version')} of {ref.entity}/{ref.project}/{ref.name}"
              f"{': ' + ', '.join(v.label for v in gone) if gone else ''}; "
              "`artfs gc` frees their bytes")
        return
    if ":" not in args.name:
        raise ArtfsError(f"say which version of {args.name} to delete (NAME:vN or NAME:alias), "
                         "or --all for every version")
    v = reg.delete_version(ref, delete_aliases=args.delete_aliases)
    print(f"deleted {v.qualified}{' and its aliases ' + ', '.join(v.aliases) if v.aliases else ''}"
          "; `artfs gc` frees its bytes")


def cmd_gc(args: argparse.Namespace) -> None:
    reg = _registry(args)
    grace = parse_duration(args.grace, "--grace").total_seconds()

    def expire(entity: str, start: float) -> list[str]:
        now = datetime.fromtimestamp(start, UTC)
        if args.dry_run:
            return [f"{entity}/{p}/{n}:v{v}" for p in reg.projects(entity)
                    for n in reg.artifacts(entity, p)
                    for v in reg.retention.due(entity, p, n, now)]
        return reg.retention.apply(entity, now)

    collector = Collector(reg.store, reg.catalog, grace=grace, dry_run=args.dry_run,
                          before_mark=expire)
    verb = "would free" if args.dry_run else "freed"
    total = 0
    for r in collector.run():
        total += r.bytes
        parts = [f"{_count(f.count, kind[:-1])}" + (f" ({human(f.bytes)})" if f.bytes else "")
                 for kind, f in r.freed.items() if f.count]
        print(f"{r.entity}: {verb} {', '.join(parts) or 'nothing'}; "
              f"{_count(r.live_versions, 'live version')}"
              f"{'; kept ' + str(r.spared) + ' newer than the grace period' if r.spared else ''}")
        if r.expired:
            expired = "would expire" if args.dry_run else "expired"
            print(f"{r.entity}: {expired} {', '.join(r.expired)}")
    temp = collector.sweep_temp()
    print(f"{verb} {human(total)} in {reg.url}"
          f"{'; ' + _count(temp, 'temporary file') if temp else ''}")


def cmd_ttl(args: argparse.Namespace) -> None:
    reg = _registry(args)
    v = reg.version(_ref(args, args.name))
    ttl = None if args.ttl.lower() == "none" else parse_duration(args.ttl, "TTL")
    v = reg.retention.set_ttl(v, ttl)
    print(f"{v.qualified} expires at {v.expires_at}; `artfs gc` deletes it then"
          if v.expires_at else f"{v.qualified} never expires")


def cmd_retain(args: argparse.Namespace) -> None:
    reg = _registry(args)
    ref = _ref(args, args.name)
    if ":" in args.name:
        raise ArtfsError(f"a retention policy is per artifact: give ENTITY/PROJECT/NAME, not "
                         f"{args.name!r}")
    if reg.artifact_type(ref.entity, ref.project, ref.name) is None:
        raise reg.not_found(ref)
    if args.keep_last is not None and args.keep_last < 1:
        raise ArtfsError(f"--keep-last takes a number of versions ≥ 1, not {args.keep_last}")
    what = f"{ref.entity}/{ref.project}/{ref.name}"
    if args.keep_last is None and not args.clear:
        n = reg.retention.keep_last(ref.entity, ref.project, ref.name)
        print(f"{what}: keeps the last {n} versions" if n else f"{what}: keeps every version")
        return
    reg.retention.set_keep_last(ref.entity, ref.project, ref.name, args.keep_last)
    print(f"{what}: `artfs gc` keeps the last {_count(args.keep_last, 'version')} and every "
          "aliased one" if args.keep_last else f"{what}: keeps every version")


def cmd_cache(args: argparse.Namespace) -> None:
    # The cache is this machine's, shared by every registry: no registry needs to exist.
    cache = LocalCache()
    if args.clean:
        print(f"freed {human(cache.clean())} from {cache.root}")
        return
    u = cache.usage()
    print(f"{cache.root}: {_count(u.blobs[0], 'blob')}, "
          f"{_count(u.indexes[0], 'version index', 'version indexes')}, "
          f"{human(u.blobs[1] + u.indexes[1])} of {human(cache.blobs.limit)}; "
          f"{human(u.other[1])} more in tables and partial reads")


# -- parser -------------------------------------------------------------------------------------
def _add_common(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--registry", default=default, metavar="URL",
                        help="a folder, s3://bucket/prefix or gs://bucket/prefix (default: "
                        "$ARTFS_REGISTRY, else the embedded registry in ~/.local/share/artfs)")
    parser.add_argument("--entity", default=default,
                        help="entity of names given without one (default: $ARTFS_ENTITY, "
                        "else your login name)")
    parser.add_argument("--project", default=default,
                        help="project of names given without one (default: $ARTFS_PROJECT, "
                        f"else {config.DEFAULT_PROJECT!r})")


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bar (there is none when stderr is not a terminal)")


def _version() -> str:
    try:
        return f"artfs {importlib.metadata.version('artfs')}"
    except importlib.metadata.PackageNotFoundError:
        return "artfs (not installed)"


def build_parser() -> argparse.ArgumentParser:
    # Accepted before or after the sub-command; SUPPRESS keeps a sub-command that does not
    # repeat an option from resetting the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, argparse.SUPPRESS)

    parser = argparse.ArgumentParser(prog="artfs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    _add_common(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", parents=[common], help="create a new, empty registry")
    p.add_argument("url", nargs="?", help="a local folder, s3://bucket/prefix or "
                   "gs://bucket/prefix (default: --registry, $ARTFS_REGISTRY or the embedded "
                   "registry)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("ls", parents=[common], help="list entities, projects, artifacts, versions")
    p.add_argument("path", nargs="?", help="ENTITY[/PROJECT[/NAME]]")
    p.add_argument("--filter", metavar="JSON",
                   help="only the versions matching a MongoDB-style filter, e.g. "
                        "'{\"metadata.ap50\": {\"$gt\": 0.9}}' (operators: $eq $ne $gt $gte "
                        "$lt $lte $in $nin $exists $regex $and $or)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("info", parents=[common], help="show a version: files, aliases, lineage")
    p.add_argument("name", help="[entity/][project/]name[:version-or-alias]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("put", parents=[common], help="log files or folders as the next version")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a file (stored under its name) or a folder (its files stored under "
                   "their paths inside it)")
    p.add_argument("--name", required=True, help="artifact name, [entity/][project/]name")
    p.add_argument("--type", required=True,
                   help="artifact type, e.g. dataset or model (fixed by the first version)")
    p.add_argument("--alias", action="append", default=[],
                   help="alias to point at the version; repeat for several (latest is always "
                   "set)")
    p.add_argument("--description", help="text describing the version")
    p.add_argument("--metadata", help="a JSON object stored with the version")
    _add_quiet(p)
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", parents=[common], help="download a version into a folder")
    p.add_argument("name", help="[entity/][project/]name[:version-or-alias] (default: latest)")
    p.add_argument("dest", help="folder to download into (created if missing)")
    p.add_argument("--merge", action="store_true",
                   help="allow a folder holding other files: add the version's files to them "
                   "(never overwrites a file whose bytes differ)")
    p.add_argument("--force", action="store_true",
                   help="also overwrite files of the version's paths whose bytes differ")
    _add_quiet(p)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("alias", parents=[common], help="point an alias at a version")
    p.add_argument("name", help="[entity/][project/]name:vN (or :alias)")
    p.add_argument("alias", help="the alias to set (moved if it points elsewhere)")
    p.add_argument("--delete", action="store_true", help="remove the alias instead")
    p.set_defaults(func=cmd_alias)

    p = sub.add_parser("delete", parents=[common],
                       help="delete a version (or a whole artifact); `artfs gc` frees the bytes")
    p.add_argument("name", help="[entity/][project/]name:vN (or :alias); with --all, the name")
    p.add_argument("--delete-aliases", action="store_true",
                   help="also remove the version's aliases (required when it has any; latest "
                   "moves to the newest remaining version)")
    p.add_argument("--all", action="store_true", help="delete every version of the artifact")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("gc", parents=[common],
                       help="delete what no live version needs (safe beside other writers)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be freed")
    p.add_argument("--grace", default="1h", metavar="DURATION",
                   help="keep anything written more recently than this (default: 1h; "
                   "units s, m, h, d, w)")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("ttl", parents=[common], help="make a version expire (W&B's TTL)")
    p.add_argument("name", help="[entity/][project/]name:vN (or :alias)")
    p.add_argument("ttl", help="time to live from the version's creation, e.g. 30d, or none")
    p.set_defaults(func=cmd_ttl)

    p = sub.add_parser("retain", parents=[common],
                       help="keep only an artifact's last N versions (and aliased ones)")
    p.add_argument("name", help="[entity/][project/]name")
    p.add_argument("--keep-last", type=int, metavar="N",
                   help="versions `artfs gc` keeps, newest first; aliased ones always stay")
    p.add_argument("--clear", action="store_true", help="remove the policy")
    p.set_defaults(func=cmd_retain)

    p = sub.add_parser("cache", parents=[common],
                       help="show or empty this machine's cache (ARTFS_CACHE_DIR)")
    p.add_argument("--clean", action="store_true",
                   help="delete every cached blob and version index (fetched again when "
                   "needed)")
    p.set_defaults(func=cmd_cache)

    from . import run_cli
    from .fs import cli as fs_cli
    from .ui import cli as ui_cli

    fs_cli.add_commands(sub, common)
    run_cli.add_commands(sub, common)
    ui_cli.add_command(sub, common)
    for listed in sub._choices_actions:  # `artfs CMD --help` opens with the line `--help` lists
        command = sub.choices[listed.dest]
        command.description = command.description or listed.help
    return parser


def _fail(message: str, code: int) -> int:
    """An expected failure ends in one line; ARTFS_DEBUG=1 adds the traceback."""
    if os.environ.get("ARTFS_DEBUG"):
        traceback.print_exc()
    print(f"artfs: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # a reader that went away shows up here, not at interpreter exit
    except BrokenPipeError:
        # `artfs ls | head -1`: the reader has all it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again, and exit as if killed by SIGPIPE.
        if os.environ.get("ARTFS_DEBUG"):
            traceback.print_exc()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Interrupted as e:
        return _fail(f"interrupted ({e})", 128 + e.signum)
    except KeyboardInterrupt:
        return _fail("interrupted", 128 + signal.SIGINT)
    except Cancelled as e:
        return _fail(str(e), 128 + signal.SIGINT)
    except ArtfsError as e:
        return _fail(f"error: {e}", 1)
    except json.JSONDecodeError as e:
        return _fail(f"error: --metadata is not valid JSON: {e}", 2)
    except OSError as e:  # a destination that cannot be written, a disk that is full, ...
        return _fail(f"error: {e}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
