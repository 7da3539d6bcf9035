"""The least a pyfuse3 file system does to take `cp` and `cp -r`: the floor of bench_staging.

`python -m bench.passthrough MOUNTPOINT BACKING` serves a flat-inode file system whose files
are BACKING/<inode>, written with pwrite on the trio thread: no hashing, no SQLite, no thread
hand-offs, no error handling beyond what cp needs. Whatever a staging folder costs above it is
artfs's own; what it costs above `cp` to local disk, no pyfuse3 file system here avoids.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import sys

import pyfuse3
import trio


class Passthrough(pyfuse3.Operations):
    def __init__(self, backing: str) -> None:
        super().__init__()
        self.backing = backing
        self.entries: dict[tuple[int, bytes], int] = {}
        self.dirs = {pyfuse3.ROOT_INODE}
        self.fds: dict[int, int] = {}
        self.inodes = itertools.count(pyfuse3.ROOT_INODE + 1)

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.attr_timeout = a.entry_timeout = 1.0
        if inode in self.dirs:
            a.st_mode = stat.S_IFDIR | 0o755
        else:
            a.st_mode = stat.S_IFREG | 0o644
            a.st_size = os.stat(f"{self.backing}/{inode}").st_size
        return a

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def lookup(self, parent: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        inode = self.entries.get((parent, name))
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def mkdir(self, parent: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        inode = self.entries[(parent, name)] = next(self.inodes)
        self.dirs.add(inode)
        return self._attrs(inode)

    async def create(self, parent: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        inode = self.entries[(parent, name)] = next(self.inodes)
        self.fds[inode] = os.open(f"{self.backing}/{inode}", os.O_RDWR | os.O_CREAT, 0o600)
        return pyfuse3.FileInfo(fh=inode), self._attrs(inode)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # As artfs answers: the kernel asks for security.capability before every write.
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(self.fds[fh], buf, off)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        os.close(self.fds.pop(fh))


def main() -> None:
    mountpoint, backing = sys.argv[1:3]
    options = set(pyfuse3.default_options) | {"fsname=passthrough"}  # as artfs mounts
    pyfuse3.init(Passthrough(backing), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    main()
