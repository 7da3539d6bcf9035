"""One exception class per thing that can go wrong; every message names the culprit."""

from __future__ import annotations


class ArtfsError(Exception):
    """Base of every error artfs raises on purpose."""


class InvalidName(ArtfsError, ValueError):
    """An entity, project, artifact or alias name that breaks the naming rules."""


class InvalidMetadata(ArtfsError, ValueError):
    """Description or metadata that cannot be stored (not JSON-serialisable)."""


class InvalidPath(ArtfsError, ValueError):
    """An entry path that is absolute, empty, or escapes its root with `..`."""


class ArtifactNotFound(ArtfsError, LookupError):
    """A name, version or alias that does not exist; the message lists what does."""


class ArtifactDeleted(ArtifactNotFound):
    """A version (or an alias left on one) that was deleted; the message says when and by whom."""


class VersionHasAliases(ArtfsError, ValueError):
    """Deleting a version that aliases still name, without consent to remove them (W&B)."""


class GcBusy(ArtfsError):
    """Another garbage collection of the same registry is running."""


class InvalidDuration(ArtfsError, ValueError):
    """A duration (--grace, a TTL) that cannot be read, e.g. not `30d` or `12h`."""


class TypeMismatch(ArtfsError):
    """An artifact name logged again with another type."""


class DuplicateEntry(ArtfsError, ValueError):
    """Two different sources added under one path inside an artifact (W&B: a ValueError)."""


class SourceError(ArtfsError):
    """A source file or directory that is missing, unreadable, or not of the expected kind."""


class FileChangedError(SourceError):
    """A source file that changed while it was being added or uploaded."""


class DestinationNotEmpty(ArtfsError):
    """A download into a folder whose other files it would overwrite or mix with."""


class Cancelled(ArtfsError):
    """A command stopped on the user's request (Ctrl-C) before it changed anything."""


class IntegrityError(ArtfsError):
    """Bytes that do not match the digest recorded for them."""


class VerificationError(IntegrityError, ValueError):
    """A folder that does not hold exactly a version's files (W&B's `verify`: a ValueError)."""


class InvalidFilter(ArtfsError, ValueError):
    """A version filter with an unknown operator or field, or an operand of the wrong kind."""


class CorruptRecord(ArtfsError):
    """A manifest, version or alias record that is malformed or does not match its digest."""


class NotARegistry(ArtfsError):
    """A registry location that exists but holds something other than an artfs registry."""


class RegistryTooNew(ArtfsError):
    """A registry whose marker says a newer artfs wrote records this one cannot read."""


class RegistryMissing(NotARegistry):
    """A registry location with nothing there yet: `artfs init` creates a registry on purpose."""


class StoreError(ArtfsError):
    """A storage operation that failed after retries; the message names the store URI and key."""


class AccessDenied(StoreError):
    """The store refused the operation for the credentials in use."""


class CollectedUnderCommit(StoreError):
    """Blobs a commit reused were removed by a garbage collection before the commit finished."""


class KeyNotFound(StoreError, KeyError):
    """A key absent from the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ReferenceError_(ArtfsError):
    """Base for reference problems (kept distinct from the builtin ReferenceError)."""


class UnsupportedScheme(ReferenceError_, ValueError):
    """A reference URI whose scheme artfs does not know."""


class ReferenceChanged(ReferenceError_):
    """A referenced object that changed or vanished since it was recorded."""


class TooManyObjects(ReferenceError_):
    """A reference prefix that expands past the configured object limit."""
