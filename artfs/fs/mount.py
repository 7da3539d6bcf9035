"""Running a mount: checks on the mount point, daemonizing, signals, unmounting.

`artfs mount` forks; the child opens the registry, mounts, starts the trio loop and only then
tells the parent (through a pipe) that the mount is usable, so the command returns when `ls`
will work, and any error before that is printed by the parent in the user's terminal.
"""

from __future__ import annotations

import errno
import faulthandler
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from .. import config
from ..errors import ArtfsError
from ..registry import Registry
from .ops import Operations
from .reader import Reader
from .tree import Tree

log = logging.getLogger(__name__)

#: Worker threads for blocking calls (disk, network, hashing). 32 leaves room for 16 readers
#: stuck on slow sources plus listings and prefetch, while bounding memory and connections.
MAX_THREADS = 32
#: Kernel read-ahead for the mount, in KiB: sequential reads then arrive as 1 MiB requests
#: (the most FUSE sends here) instead of 128 KiB, an eighth of the requests and of their fixed
#: cost. Measured (kernel 6.18, 1 GiB, source in page cache, pread reader): 128 ~0.45 GB/s,
#: 1024 ~1.0 GB/s; 4096 and 16384 no faster.
READ_AHEAD_KB = 1024
#: How long `artfs mount` waits for the background process to report the mount usable.
READY_TIMEOUT_S = 120.0
#: How long `artfs umount` waits for the mount process to exit after the unmount.
EXIT_TIMEOUT_S = 15.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class MountOptions:
    mountpoint: Path
    registry: str | None
    cache_size: int | None
    read_only: bool
    allow_other: bool
    debug: bool
    #: None: a file per mount point in the state folder.
    log_file: Path | None = None


def _files(mnt: Path) -> tuple[Path, Path]:
    """The log file and pid file of the mount at `mnt` (one pair per mount point)."""
    slug = f"{mnt.name or 'root'}-{hashlib.sha256(str(mnt).encode()).hexdigest()[:10]}"
    base = config.state_dir() / "mounts"
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{slug}.log", base / f"{slug}.pid"


def is_stale(mnt: Path) -> bool:
    """A FUSE mount whose process died: every access fails with ENOTCONN."""
    try:
        os.stat(mnt)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def clean_stale(mnt: Path) -> None:
    result = subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True,
                            text=True)
    if result.returncode != 0 and is_stale(mnt):
        raise ArtfsError(
            f"{mnt} is a stale mount left by a mount process that died, and "
            f"`fusermount3 -u -z {mnt}` failed ({result.stderr.strip()}); run it as the user "
            "who mounted it, or `umount -l` as root"
        )


def _recorded_pid(mnt: Path) -> int | None:
    try:
        return int(_files(mnt)[1].read_text())
    except (OSError, ValueError):
        return None


def _process_gone(pid: int) -> bool:
    """True once every thread of `pid` has exited (a zombie leader may outlive its threads,
    and the FUSE connection only aborts when the last of them closes /dev/fuse)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return tasks == [str(pid)] and _is_zombie(pid)


def prepare_mountpoint(mnt: Path) -> None:
    """Refuse a mount point we must not use; clean one left behind by a killed mount."""
    pid = _recorded_pid(mnt)
    if pid is not None and os.path.ismount(mnt) and _process_gone(pid):
        # Killed a moment ago: wait for the kernel to notice, then clean up below.
        deadline = time.monotonic() + 5
        while not is_stale(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
    if is_stale(mnt):
        clean_stale(mnt)
        print(f"artfs: cleaned up a stale mount at {mnt} left by a process that died",
              file=sys.stderr)
    if not mnt.exists():
        raise ArtfsError(f"mount point {mnt} does not exist; create it with `mkdir -p {mnt}`")
    if not mnt.is_dir():
        raise ArtfsError(f"mount point {mnt} is not a directory")
    if os.path.ismount(mnt):
        kind, source = mounted_source(mnt) or ("?", "?")
        serving = f"artfs, serving {source}" if kind == "fuse.artfs" else f"{kind} of {source}"
        raise ArtfsError(f"{mnt} is already a mount point ({serving}); unmount it first "
                         f"(`artfs umount {mnt}`) or mount on another empty folder")
    with os.scandir(mnt) as it:
        if any(True for _ in it):
            raise ArtfsError(f"mount point {mnt} is not empty; mounting would hide its "
                             "files — use an empty folder")


def _mount_device(mnt: Path) -> str | None:
    """`major:minor` of the mount at `mnt`, read from mountinfo: stat would ask ourselves."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == str(mnt):
                found = fields[2]
    return found


def raise_read_ahead(mnt: Path) -> None:
    """Raise the mount's read-ahead. Only takes effect after the kernel's INIT request has been
    answered: the INIT reply lowers it to the 128 KiB the kernel offered in that request."""
    device = _mount_device(mnt)
    if device is None:
        return
    path = Path("/sys/class/bdi") / device / "read_ahead_kb"
    try:
        path.write_text(f"{READ_AHEAD_KB}\n")
        log.info("read-ahead of %s set to %d KiB", mnt, READ_AHEAD_KB)
    except OSError as e:
        log.info("kernel read-ahead stays at its default (%s: %s)", path, e)


def _escape_option(value: str) -> str:
    """libfuse splits options at commas; a backslash keeps one (or itself) literal."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def mounted_source(mnt: Path) -> tuple[str, str] | None:
    """(file system type, source) of the mount at `mnt` from mountinfo: for an artfs mount,
    `fuse.artfs` and the registry URL it serves."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == str(mnt):
                rest = fields[fields.index("-") + 1:]
                found = (rest[0], _unescape(rest[1]))
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (`\\040`)."""
    return field.encode().decode("unicode_escape")


def serve(opts: MountOptions, ready: Callable[[list[str]], None],
          pid_file: Path | None) -> None:
    """Mount, serve requests until unmounted or signalled, then unmount and clean up."""
    # `kill -USR1 PID` writes every thread's stack to the log: how to see what a hung request
    # is waiting for.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    # The embedded default registry is created on first use, so `make mount` works on a fresh
    # machine; a registry the user named must already exist (a typo must not create one).
    registry = Registry(opts.registry, cache_size=opts.cache_size)
    work_dir = registry.local_cache.work_dir()
    limiter = trio.CapacityLimiter(MAX_THREADS)
    tree = Tree(registry, limiter)
    reader = Reader(registry, limiter, work_dir)
    ops = Operations(registry, tree, reader)

    options = set(pyfuse3.default_options)
    # `mount` and `df` show the registry as the mount's source.
    options |= {f"fsname={_escape_option(registry.url)}", "subtype=artfs"}
    if opts.read_only:
        options.add("ro")
    if opts.allow_other:
        options.add("allow_other")
    if opts.debug:
        options.add("debug")
    pyfuse3.init(ops, str(opts.mountpoint), options)
    try:
        if pid_file is not None:
            pid_file.write_text(f"{os.getpid()}\n")
        trio.run(_main, opts.mountpoint, reader, lambda: ready(_warnings(ops)))
    finally:
        pyfuse3.close(unmount=True)
        shutil.rmtree(work_dir, ignore_errors=True)
        registry.close()
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
        log.info("unmounted %s", opts.mountpoint)


def _warnings(ops: Operations) -> list[str]:
    """What the user must know at mount time, not only from the log."""
    owner = ops.staging_folders.areas.owner
    if owner is None:
        return []
    return [f"@staging folders are read-only in this mount: mount pid {owner} on "
            "this machine serves them for the same registry and state folder; write through "
            "that mount, or unmount it first"]


async def _main(mnt: Path, reader: Reader, ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        reader.nursery = nursery
        nursery.start_soon(_stop_on_signal)
        nursery.start_soon(_when_answering, mnt, ready)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _when_answering(mnt: Path, ready: Callable[[], None]) -> None:
    """Once the mount has answered a request (so INIT is done), raise the read-ahead and
    report the mount usable."""
    await trio.to_thread.run_sync(os.stat, mnt, abandon_on_cancel=True)
    raise_read_ahead(mnt)
    log.info("serving %s", mnt)
    ready()


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s received: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def _configure_logging(stream: object, debug: bool) -> None:
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def mount(opts: MountOptions, *, foreground: bool) -> int:
    prepare_mountpoint(opts.mountpoint)
    log_file, pid_file = _files(opts.mountpoint)
    if opts.log_file is not None:
        opts.log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file = opts.log_file
    if foreground:
        _configure_logging(sys.stderr, opts.debug)

        def announce(warnings: list[str]) -> None:
            for warning in warnings:
                print(f"artfs: warning: {warning}", file=sys.stderr)
            print(f"artfs: mounted on {opts.mountpoint}; Ctrl-C or `artfs umount "
                  f"{opts.mountpoint}` to unmount", file=sys.stderr, flush=True)

        serve(opts, announce, pid_file)
        return 0
    return _daemonize(opts, log_file, pid_file)


def _daemonize(opts: MountOptions, log_file: Path, pid_file: Path) -> int:
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _become_daemon(log_file)
        _configure_logging(sys.stderr, opts.debug)
        notify = _Notifier(write_end)
        code = 1
        try:
            serve(opts, notify.ready, pid_file)
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the waiting parent, then exit
            log.exception("mount of %s failed", opts.mountpoint)
            notify.error(str(e) or type(e).__name__)
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(write_end)
    message, *warnings = _read_message(read_end).split("\t")
    for warning in warnings:
        print(f"artfs: warning: {warning}", file=sys.stderr)
    if message == "ok":
        print(f"artfs: mounted {opts.registry or config.registry_url()} on {opts.mountpoint} "
              f"(pid {pid}, log {log_file})")
        return 0
    print(f"artfs: error: {message or 'the mount process exited'} (log: {log_file})",
          file=sys.stderr)
    return 1


def _become_daemon(log_file: Path) -> None:
    """New session, stdin from /dev/null, stdout/stderr to the log: the caller's terminal or
    pipe is released, so `subprocess.run(['artfs', 'mount', ...])` returns."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    os.chdir("/")


class _Notifier:
    """The child's end of the readiness pipe; written at most once."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def _send(self, message: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, message.encode() + b"\n")
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def ready(self, warnings: list[str]) -> None:
        # One line: the parent reads up to the first newline.
        self._send("\t".join(["ok", *(" ".join(w.split()) for w in warnings)]))

    def error(self, message: str) -> None:
        self._send(message.replace("\n", " "))


def _read_message(fd: int) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    data = b""
    while b"\n" not in data and time.monotonic() < deadline:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data.decode(errors="replace").strip()


def umount(mnt: Path, *, lazy: bool) -> int:
    if is_stale(mnt):
        clean_stale(mnt)
        print(f"artfs: cleaned up a stale mount at {mnt} left by a process that died")
        return 0
    if not os.path.ismount(mnt):
        raise ArtfsError(f"{mnt} is not mounted")
    pid = _recorded_pid(mnt)
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mnt)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        if "busy" in result.stderr.lower():
            raise ArtfsError(
                f"{mnt} is busy: a process has a file open or its working directory inside; "
                f"close it, or run `artfs umount --lazy {mnt}` to detach now and finish "
                "when the last file is closed"
            )
        raise ArtfsError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()}")
    if pid is not None and not lazy:  # a lazy unmount ends when the last file is closed
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while not _process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    print(f"artfs: unmounted {mnt}")
    return 0


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
