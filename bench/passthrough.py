"""The least a pyfuse3 file system does to take `cp` and `cp -r`: the floor of bench_staging.

`python -m bench.passthrough [--writeback] [--count FILE] MOUNTPOINT BACKING` serves a
flat-inode file system whose files are BACKING/<inode>, written with pwrite on the trio thread:
no hashing, no SQLite, no thread hand-offs, no error handling beyond what cp needs. Whatever a
staging folder costs above it is artfs's own; what it costs above `cp` to local disk, no
pyfuse3 file system here avoids.

`--writeback` turns on the kernel's FUSE writeback cache (artfs leaves it off: see
`artfs.fs.ops.Operations.enable_writeback_cache`); `--count FILE` writes, at unmount, how many
requests of each kind arrived and the sizes of the WRITE requests (JSON): `cp -r` of small
files costs 7 requests a file (LOOKUP, CREATE, GETXATTR of security.capability, WRITE, FLUSH,
RELEASE, and a GETATTR of the folder, whose attributes each CREATE invalidates), up to 8
with the writeback cache (a SETATTR of the times).
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import stat
from collections import Counter

import pyfuse3
import trio

#: As artfs answers (`artfs.fs.attrs.BLKSIZE`): `cp` then writes 1 MiB at a time, not 128 KiB.
BLKSIZE = 1024 * 1024


class Passthrough(pyfuse3.Operations):
    def __init__(self, backing: str) -> None:
        super().__init__()
        self.backing = backing
        self.entries: dict[tuple[int, bytes], int] = {}
        self.dirs = {pyfuse3.ROOT_INODE}
        self.fds: dict[int, int] = {}
        self.inodes = itertools.count(pyfuse3.ROOT_INODE + 1)
        self.requests: Counter[str] = Counter()
        self.write_sizes: Counter[int] = Counter()

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.attr_timeout = a.entry_timeout = 1.0
        a.st_blksize = BLKSIZE
        if inode in self.dirs:
            a.st_mode = stat.S_IFDIR | 0o755
        else:
            a.st_mode = stat.S_IFREG | 0o644
            a.st_size = os.stat(f"{self.backing}/{inode}").st_size
        return a

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.requests["getattr"] += 1
        return self._attrs(inode)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.requests["setattr"] += 1
        if fields.update_size:
            os.truncate(f"{self.backing}/{inode}", attr.st_size)
        return self._attrs(inode)

    async def lookup(self, parent: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.requests["lookup"] += 1
        inode = self.entries.get((parent, name))
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def mkdir(self, parent: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.requests["mkdir"] += 1
        inode = self.entries[(parent, name)] = next(self.inodes)
        self.dirs.add(inode)
        return self._attrs(inode)

    async def create(self, parent: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        self.requests["create"] += 1
        inode = self.entries[(parent, name)] = next(self.inodes)
        self.fds[inode] = os.open(f"{self.backing}/{inode}", os.O_RDWR | os.O_CREAT, 0o600)
        return pyfuse3.FileInfo(fh=inode), self._attrs(inode)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self.requests["open"] += 1
        self.fds[inode] = os.open(f"{self.backing}/{inode}", os.O_RDWR)
        return pyfuse3.FileInfo(fh=inode)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # As artfs answers: the kernel asks for security.capability before every write.
        self.requests["getxattr"] += 1
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.requests["read"] += 1
        return os.pread(self.fds[fh], size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.requests["write"] += 1
        self.write_sizes[len(buf)] += 1
        return os.pwrite(self.fds[fh], buf, off)

    async def flush(self, fh: int) -> None:
        self.requests["flush"] += 1

    async def release(self, fh: int) -> None:
        self.requests["release"] += 1
        os.close(self.fds.pop(fh))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        self.requests["forget"] += len(inode_list)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough")
    parser.add_argument("--writeback", action="store_true", help="kernel writeback cache")
    parser.add_argument("--count", help="write request counts here (JSON) at unmount")
    parser.add_argument("mountpoint")
    parser.add_argument("backing")
    args = parser.parse_args()
    ops = Passthrough(args.backing)
    ops.enable_writeback_cache = args.writeback
    options = set(pyfuse3.default_options) | {"fsname=passthrough"}  # as artfs mounts
    pyfuse3.init(ops, args.mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()
        if args.count:
            with open(args.count, "w") as f:
                json.dump({"requests": ops.requests, "write_sizes": ops.write_sizes}, f)


if __name__ == "__main__":
    main()
