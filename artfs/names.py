"""Parse and validate `entity/project/name:alias` and entry paths."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidName, InvalidPath

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_VERSION = re.compile(r"^v(0|[1-9][0-9]*)$")
# Looks like a version even when it is not canonical (`v07`): refused as an alias too.
_VERSION_LIKE = re.compile(r"^v[0-9]+$")

LATEST = "latest"


def check_name(value: str, what: str = "artifact name") -> str:
    """Return `value` if it is a valid entity, project or artifact name."""
    if not is_name(value):
        raise InvalidName(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '_', '-' or '.' "
            "(not '.' or '..' alone)"
        )
    return value


def is_name(value: str) -> bool:
    """Whether `value` may name an entity, project or artifact (for filtering listings)."""
    return isinstance(value, str) and bool(_NAME.match(value)) and value not in (".", "..")


def check_alias(value: str) -> str:
    """Return `value` if it may be used as an alias (a version-like string may not)."""
    check_name(value, "alias")
    if _VERSION_LIKE.match(value):
        raise InvalidName(f"invalid alias {value!r}: it looks like a version number")
    return value


def parse_version(value: str) -> int | None:
    """The number of `vN`, or None when `value` is not a version label."""
    m = _VERSION.match(value)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class ArtifactRef:
    """A qualified artifact spec: entity/project/name plus a version (`vN`) or alias."""

    entity: str
    project: str
    name: str
    label: str = LATEST

    @property
    def version(self) -> int | None:
        return parse_version(self.label)

    @property
    def qualified(self) -> str:
        return f"{self.entity}/{self.project}/{self.name}:{self.label}"

    def __str__(self) -> str:
        return self.qualified


def parse_ref(spec: str, *, entity: str, project: str) -> ArtifactRef:
    """Parse `name`, `name:alias`, `name:vN`, `project/name:vN`, `entity/project/name:alias`.

    Missing parts come from `entity` and `project`; a bare name means `name:latest`.
    """
    if not isinstance(spec, str) or not spec:
        raise InvalidName(
            f"invalid artifact spec {spec!r}: expected [entity/][project/]name[:alias]"
        )
    path, sep, label = spec.partition(":")
    if sep and not label:
        raise InvalidName(f"invalid artifact spec {spec!r}: nothing after ':'")
    parts = path.split("/")
    if len(parts) > 3:
        raise InvalidName(
            f"invalid artifact spec {spec!r}: expected at most entity/project/name:alias"
        )
    name = parts[-1]
    if len(parts) >= 2:
        project = parts[-2]
    if len(parts) == 3:
        entity = parts[0]
    label = label or LATEST
    if parse_version(label) is None:
        check_alias(label)
    return ArtifactRef(
        check_name(entity, "entity"), check_name(project, "project"), check_name(name), label
    )


#: The longest file or folder name (one path component) in bytes: NAME_MAX of Linux
#: filesystems, so every version can be downloaded and mounted (statfs says so too).
NAME_MAX = 255


def check_entry_path(path: str) -> str:
    """Normalise an entry path inside an artifact; refuse anything that could escape a root."""
    if not isinstance(path, str) or not path:
        raise InvalidPath(f"invalid entry path {path!r}: empty")
    if "\x00" in path or "\\" in path:
        raise InvalidPath(f"invalid entry path {path!r}: contains NUL or backslash")
    if path.startswith("/"):
        raise InvalidPath(f"invalid entry path {path!r}: absolute paths are not allowed")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise InvalidPath(f"invalid entry path {path!r}: empty")
    if ".." in parts:
        raise InvalidPath(f"invalid entry path {path!r}: '..' is not allowed")
    for part in parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise InvalidPath(f"invalid entry path {path!r}: the name {part[:40]!r}… is {size} "
                              f"bytes long; a file or folder name is at most {NAME_MAX} bytes")
    return "/".join(parts)
