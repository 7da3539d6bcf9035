"""What the mount says about a file or folder: modes, sizes, times, owner, and how long the
kernel may keep each answer (the TTLs of the three kinds of node)."""

from __future__ import annotations

import os
import stat
import time

import pyfuse3

#: Names inside a committed version never change: the kernel may keep entries and attributes
#: for an hour (and pages for as long as it likes, see keep_cache in `VersionViews.open`).
IMMUTABLE_TTL_S = 3600.0
#: Entities, projects, artifacts, version and alias names: short, so a version or alias move
#: made elsewhere is seen within LISTING_TTL_S + this (well under the 5 s promised).
NAMESPACE_TTL_S = 1.0
#: Entries and attributes of staged files: only this mount changes them (the commands that
#: replace the whole tree go through it and invalidate), so a short TTL is only a safety net.
STAGING_TTL_S = 1.0
#: Hints `cp` and friends to read in 1 MiB chunks, the largest FUSE read request.
BLKSIZE = 1024 * 1024
#: Modes of the folders and files of versions and namespaces (staged ones keep their own
#: permission bits, `staging.stat_mode`).
DIR_MODE = stat.S_IFDIR | 0o755
FILE_MODE = stat.S_IFREG | 0o644


class Attributes:
    """Makes the `EntryAttributes` of every reply: each node belongs to the mounting user."""

    def __init__(self) -> None:
        self.uid, self.gid = os.getuid(), os.getgid()
        #: The times of namespace folders, which have none of their own.
        self.started_ns = time.time_ns()

    def __call__(self, inode: int, mode: int, size: int, mtime_ns: int, ttl: float,
                 entry_ttl: float | None = None, nlink: int = 1, *, atime_ns: int | None = None,
                 ctime_ns: int | None = None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = mode
        a.st_nlink = nlink
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_size = size
        a.st_blksize = BLKSIZE
        a.st_blocks = -(-size // 512)
        a.st_mtime_ns = mtime_ns
        a.st_atime_ns = mtime_ns if atime_ns is None else atime_ns
        a.st_ctime_ns = mtime_ns if ctime_ns is None else ctime_ns
        a.attr_timeout = ttl
        a.entry_timeout = ttl if entry_ttl is None else entry_ttl
        return a

    def namespace(self, inode: int) -> pyfuse3.EntryAttributes:
        # nlink 1 means "subdirectories not counted" (as on btrfs); find and du accept it.
        return self(inode, DIR_MODE, 0, self.started_ns, NAMESPACE_TTL_S)
