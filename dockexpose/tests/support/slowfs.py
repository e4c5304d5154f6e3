#!/usr/bin/env python3
"""A deliberately slow disk: a FUSE passthrough of BACKING at MOUNT whose every
write() sleeps for the milliseconds written in DELAY_FILE (read at each write, so the
test turns the slowness on and off), then writes through. Mounted with direct_io, so
the kernel hands each write() of the daemon straight here: the caller's write blocks
for the whole sleep, as on a stalled disk. Each write's duration goes to STATS_FILE
("<bytes> <seconds>" a line). Runs in the foreground until unmounted.

usage: slowfs.py BACKING MOUNT DELAY_FILE STATS_FILE
"""

import errno
import os
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations  # fusepy (PyPI), on libfuse2


class SlowFS(Operations):
    def __init__(self, backing, delay_file, stats_file):
        self.backing = backing
        self.delay_file = delay_file
        self.stats = open(stats_file, "a", buffering=1)
        self.stats_lock = threading.Lock()

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def _delay(self):
        try:
            with open(self.delay_file) as f:
                return int(f.read().strip() or "0") / 1000.0
        except (OSError, ValueError):
            return 0.0

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._path(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._path(path), times)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)

    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        start = time.monotonic()
        delay = self._delay()
        if delay > 0:
            time.sleep(delay)
        # The daemon appends: the backing fd is O_APPEND as the daemon's is.
        n = os.write(fh, data)
        with self.stats_lock:
            self.stats.write(f"{n} {time.monotonic() - start:.3f}\n")
        return n

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))

    def unlink(self, path):
        os.unlink(self._path(path))

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        os.fsync(fh)
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    backing, mount, delay_file, stats_file = sys.argv[1:]
    FUSE(SlowFS(backing, delay_file, stats_file), mount, foreground=True, direct_io=True, nothreads=False)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        print(f"slowfs: {e}", file=sys.stderr)
        sys.exit(errno.EIO)
