"""Whether a process recorded in a lock, claim or temporary file name still runs."""

from __future__ import annotations

import errno
import os


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as e:
        return e.errno != errno.ESRCH
    return True
