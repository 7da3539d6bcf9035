"""Which errno a failed request answers, in one place: a request never takes the mount down.

What the registry does not have is ENOENT; staging requests keep the errno of the OS error
that stopped them (ENOSPC, EEXIST…); a file whose bytes cannot be fetched or verified is EIO
with the reason in the log; anything else is a bug or an outage, logged with its traceback and
answered EIO. A handler that raises `pyfuse3.FUSEError` itself has chosen already.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable
from typing import TypeVar

import pyfuse3

from ..errors import ArtifactNotFound

log = logging.getLogger(__name__)

T = TypeVar("T")


def erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


def eio(where: str, e: Exception) -> pyfuse3.FUSEError:
    """A file's bytes could not be read, fetched or verified (the log says why)."""
    log.error("EIO: %s: %s", where, e)
    return pyfuse3.FUSEError(errno.EIO)


async def registry_call(coro: Awaitable[T]) -> T:
    """Await a registry call; missing names are ENOENT, any other failure EIO and a log."""
    try:
        return await coro
    except ArtifactNotFound:
        raise pyfuse3.FUSEError(errno.ENOENT) from None
    except pyfuse3.FUSEError:
        raise
    except Exception:  # noqa: BLE001 - the mount must stay up whatever the registry does
        log.exception("registry request failed")
        raise pyfuse3.FUSEError(errno.EIO) from None


async def staging_call(coro: Awaitable[T]) -> T:
    """Await a staging request: OS errors keep their errno; anything unexpected is logged
    and becomes EIO, so one bad request never takes the mount down."""
    try:
        return await coro
    except pyfuse3.FUSEError:
        raise
    except OSError as e:
        log.warning("staging request failed: %s", e)
        raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
    except Exception:  # noqa: BLE001 - the mount must stay up
        log.exception("staging request failed")
        raise pyfuse3.FUSEError(errno.EIO) from None
