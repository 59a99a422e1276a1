"""File modes that follow the user's umask, for what torchpalm writes through private temporary names.

`tempfile.mkdtemp` makes 0700 folders, `tempfile.mkstemp` and safetensors' `save_file` 0600 files, while `open()`
gives 0666 & ~umask. A checkpoint or bundle written into a temporary folder and renamed into place would otherwise
be readable by its owner alone, so sharing it would need a `chmod`. `follow_umask` gives every file and folder under
a path the mode the umask gives ordinary files (0644 and 0755 under the usual umask 022).
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask (read from /proc where it is shown; else set and restored under a lock)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Gives `path` (and, for a folder, everything under it) the umask's modes: folders 0777 & ~umask, files
    0666 & ~umask (0777 & ~umask for files with an execute bit). Links are left alone."""
    mask = current_umask()
    path = os.fspath(path)

    def set_mode(p: str, folder: bool) -> None:
        if os.path.islink(p):
            return
        executable = folder or os.stat(p).st_mode & 0o111
        os.chmod(p, (0o777 if executable else 0o666) & ~mask)

    if not os.path.isdir(path):
        set_mode(path, False)
        return
    for root, _, files in os.walk(path):
        set_mode(root, True)
        for name in files:
            set_mode(os.path.join(root, name), False)
