"""Entry names for references (the spec's naming table) and the object-limit error."""

from __future__ import annotations

from ..errors import SourceError, TooManyObjects

#: After the limit is passed, listing goes on this many objects more only to tell the user how
#: many matched: at most ~100 more list requests (a few seconds on S3), never an unbounded count.
COUNT_PAST_LIMIT = 100_000


def split_bucket_uri(uri: str, scheme: str, store: str, part: str) -> tuple[str, str]:
    """`<scheme>://bucket/<part>` → (bucket, part). Not urlparse: object names may hold `?`,
    `#` and `%`. `store` ("S3", "GCS") and `part` ("key", "name") go into the error."""
    rest = uri[len(scheme) + 3:] if uri.startswith(f"{scheme}://") else ""
    bucket, _, name = rest.partition("/")
    if not bucket:
        raise SourceError(
            f"invalid {store} reference {uri!r}: expected {scheme}://bucket/{part}")
    return bucket, name


def leaf_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def entry_name(base: str, name: str | None, rel: str | None) -> str:
    """Apply the naming table: an object keeps its leaf name (or `name`); a prefix's objects
    keep their path below the prefix, under `name` when given."""
    if rel is None:
        return name or leaf_name(base)
    return f"{name.rstrip('/')}/{rel}" if name else rel


def too_many(uri: str, count: int, limit: int, complete: bool) -> TooManyObjects:
    """The error for a prefix past `limit`; `complete` says whether `count` is exact."""
    matched = f"{count:,}" if complete else f"more than {count:,}"
    need = count if complete else count + 1
    return TooManyObjects(
        f"reference {uri} matches {matched} objects, more than the limit of {limit:,}; "
        f"pass add_reference(..., max_objects={need}) or set ARTFS_MAX_OBJECTS={need} "
        "to add them all, or reference a narrower prefix"
    )
