"""The save folder on disk: one training run at a time holds it, and a write that fails there is said in
plain words.

`SaveFolderLock` is an OS lock (`flock` on the folder) that a run holds from `set_saver` on; the
kernel releases it when the process ends, however it ends, so a second run on the same folder is refused
(naming the holder's pid) instead of removing the first one's unfinished save. `plain_write_error` turns what
a full disk, a quota, a file size limit or a read-only file system raises (an OSError, safetensors'
`SafetensorError` quoting `os error 28`, torch.save's `unexpected pos`) into an OSError that says so, where,
and how much the checkpoint needs.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import threading
import weakref

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; the save folder is not locked there
    fcntl = None

logger = logging.getLogger("torchpalm")

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # "no space left" and "quota exceeded": the same advice


# ---------------------------------------------------------------- writes that fail: in plain words
_OS_ERROR = re.compile(r"os error (\d+)|code: (\d+)")  # safetensors' (Rust) way of carrying an errno


def _errno_of(e: BaseException) -> int | None:
    """The errno behind a failed write: an OSError's, or the one safetensors' SafetensorError quotes."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    m = _OS_ERROR.search(str(e))
    return int(m.group(1) or m.group(2)) if m else None


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in nested dicts / lists / tuples (what a checkpoint's files hold, about)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def plain_write_error(e: BaseException, folder: str, what: str, needed: int = 0) -> OSError | None:
    """The failed write `e` of `what` into `folder` as an OSError saying what happened in plain words, or None
    when it is none of these: a full disk or quota (ENOSPC, EDQUOT; from safetensors as `os error 28`), a file
    size limit (EFBIG: `ulimit -f`, or the file system's largest file), a read-only file system (EROFS: also a
    disk remounted read-only mid-run), or torch.save's `unexpected pos` (its zip writer's short write)."""
    code = _errno_of(e)
    torch_short_write = isinstance(e, RuntimeError) and ("unexpected pos" in str(e) or "failed writing" in str(e))
    if code not in (*DISK_FULL, errno.EFBIG, errno.EROFS) and not torch_short_write:
        return None
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    room = f"; {_mib(free)} free there" if free is not None else ""
    size = f" It needs about {_mib(needed)}{room}." if needed else ""
    undone = ("the unfinished copy was removed and earlier checkpoints are untouched." if what.startswith("checkpoint")
              else "")
    if code is None and free is not None and needed and free < needed:
        code = errno.ENOSPC  # torch's short write on a disk without room for the file: that is what happened
    if code in DISK_FULL:
        return OSError(code, f"the disk holding {folder} is full ({os.strerror(code)}) while saving {what}: "
                             f"{undone}{size} Free some space (or keep fewer checkpoints: set_saver(..., "
                             f"max_to_keep=K)) and save again")
    if code == errno.EFBIG:
        return OSError(code, f"a file of {what} in {folder} is larger than this process may write "
                             f"({os.strerror(code)}: a file size limit such as `ulimit -f`, or the largest file the "
                             f"file system holds): {undone}{size} Raise the limit or save elsewhere")
    if code == errno.EROFS:
        return OSError(code, f"{folder} is on a read-only file system ({os.strerror(code)}; was it remounted "
                             f"read-only?) while writing {what}: {undone or 'nothing was written.'} Make it "
                             f"writable again, or save elsewhere, and resume")
    return OSError(errno.EIO, f"writing {what} to {folder} stopped part-way ({str(e).splitlines()[0][:200]}): "
                              f"most likely the disk filled up or a file size limit was reached. {undone}{size} "
                              f"Check the space and limits there and save again")


# ---------------------------------------------------------------- one run per save folder
class SaveFolderBusy(RuntimeError):
    """Another process holds the save folder's lock: a training run is (still) writing there."""


def _flock_holder(path: str) -> str | None:
    """The pid holding a flock on `path` (Linux: from /proc/locks, which names the file by device and inode)."""
    try:
        st = os.stat(path)
        inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:  # "1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF"
                parts = line.split()
                if "FLOCK" in parts and "->" not in parts and inode in parts:
                    return parts[parts.index(inode) - 1]
    except OSError:
        pass
    return None


class SaveFolderLock:
    """An exclusive OS lock (`flock`) on the save folder itself, held while this object lives.

    The kernel drops it when the process ends however it ends (SIGKILL included), so nothing stale is ever
    left to block anyone, and nothing is written into the folder. Several
    trainers of one process may share a folder (a script that trains, then resumes in a new trainer); the lock
    is released when the last of them lets go. File systems without `flock` (some network mounts) and Windows
    work as before, unlocked, with a log line.

    Raises:
        SaveFolderBusy: another process holds the lock (the message names its pid).
    """

    _held: dict[str, list] = {}  # real path of the folder -> [lock file descriptor or None, users]
    _guard = threading.Lock()

    def __init__(self, save_path: str | os.PathLike):
        save_path = os.fspath(save_path)
        self.key = os.path.realpath(save_path)
        with self._guard:
            if self.key not in self._held:
                self._held[self.key] = [self._acquire(save_path), 0]
            self._held[self.key][1] += 1
        self._finalizer = weakref.finalize(self, SaveFolderLock._let_go, self.key)

    @staticmethod
    def _acquire(save_path: str) -> int | None:
        if fcntl is None:
            return None
        # the folder itself is locked: no lock file appears in it, and the holder is the kernel's to name
        fd = os.open(save_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _flock_holder(save_path)
            holder = f"pid {pid} holds its lock" if pid else "another process holds its lock"
            raise SaveFolderBusy(
                f"{save_path} is in use by another training run ({holder}): a second run there would remove "
                f"that run's unfinished saves. Wait for it to end (a run stopped with SIGTERM saves before it "
                f"exits), or choose another save_path") from None
        except OSError as e:  # no flock on this file system
            os.close(fd)
            logger.info("%s: cannot lock the save folder (%s); going on without the lock", save_path, e)
            return None
        return fd

    @classmethod
    def _let_go(cls, key: str) -> None:
        with cls._guard:
            entry = cls._held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del cls._held[key]
                if entry[0] is not None:
                    os.close(entry[0])  # closing the descriptor releases the flock

    def release(self) -> None:
        """Lets go now (else when this object is collected, or the process ends)."""
        self._finalizer()
