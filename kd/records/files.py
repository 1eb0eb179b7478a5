"""Opening the files kd writes and reads, as untrusted places.

- Writes (result lines, locks, per-epoch CSVs) never go through a symbolic link: the last part of the
  path is opened with O_NOFOLLOW, so a link planted where a file will be written is refused in one
  line instead of creating or growing whatever it points to, and the folders kd makes below the
  results folder and the store (curves/<run>/, runs/<run>/) must not lead out of it (check_inside).
  Only regular files are written.
- Reads of result lines and job files take regular files only (a FIFO or /dev/zero named *.jsonl
  would hang or exhaust memory) and at most `MAX_READ` bytes of one file.
- A filesystem without working `flock` (some network filesystems) is one line that says so, before
  anything is trained, never a lost result line (probe_locks).
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from kd.errors import KDError

MAX_READ = 256 * 2**20          # bytes read of one results or job file (a result line is a few KB)


class NotReadable(Exception):
    """A file that is not read: not a regular file, or larger than MAX_READ; str() says why."""


def open_write(path: Path, flags: int = os.O_WRONLY | os.O_CREAT, what: str = "file") -> int:
    """A file descriptor for writing `path` (created 0644 if missing), refusing a symbolic link and
    anything but a regular file with one KDError line. The caller closes it."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise KDError(f"refusing to write the {what} {path}: it is a symbolic link "
                          f"(kd writes no file through a link; remove it)") from None
        if e.errno == errno.ENXIO:                      # a FIFO without a reader
            raise KDError(f"refusing to write the {what} {path}: not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KDError(f"refusing to write the {what} {path}: not a regular file")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def check_inside(path: Path, root: Path, what: str = "file") -> None:
    """Refuse, in one line, a path whose folders below `root` (which kd creates: curves/<run>/,
    runs/<run>/) lead out of it through a symbolic link. `root` itself may be a link (the user's choice)."""
    try:
        parent, base = Path(path).parent, Path(root).resolve()
        q = parent
        while not q.exists() and q != q.parent:
            q = q.parent
        q = q.resolve()
    except (OSError, RuntimeError):
        raise KDError(f"refusing to write the {what} {path}: its folder cannot be resolved (a link loop?)") from None
    if q != base and base not in q.parents and q not in base.parents:     # (an ancestor: nothing made yet)
        raise KDError(f"refusing to write the {what} {path}: a symbolic link under {root} leads out of it (to {q}); "
                      f"remove it")


def flock(fd: int, path: Path, operation: int) -> None:
    """fcntl.flock, with a filesystem that does not support it as one KDError line (BlockingIOError,
    a lock held elsewhere with LOCK_NB, is raised as it is)."""
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        raise
    except OSError as e:
        raise KDError(f"the filesystem of {path} does not support file locks (flock: {e.strerror or e}); "
                      f"put the results and the store on a filesystem that does (a local disk, NFS with "
                      f"locking, Lustre mounted with flock)") from None


def probe_locks(folder: Path) -> None:
    """Refuse, before anything is trained, a folder whose filesystem cannot flock: a temporary file in
    the folder (or its nearest existing ancestor) is locked, then removed. Leaves nothing behind."""
    q = Path(folder).absolute()
    while not q.is_dir() and q != q.parent:
        q = q.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=".kd-lock-probe.", dir=q)
    except OSError:
        return                                          # not writable: check_writable says so
    try:
        flock(fd, Path(folder), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
        os.unlink(tmp)


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file (a link to one is followed), at most `limit` (MAX_READ); else
    NotReadable (a FIFO, a device, a folder, too large) or OSError."""
    limit = MAX_READ if limit is None else limit
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise NotReadable("a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise NotReadable("not a regular file (a FIFO, a device or a socket); not read")
        if st.st_size > limit:
            raise NotReadable(f"{st.st_size} bytes, more than the {limit} read of one file; not read")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise NotReadable(f"grew past the {limit} bytes read of one file; not read")
        return b"".join(chunks)
    finally:
        os.close(fd)
