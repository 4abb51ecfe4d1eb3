"""Writing files as root without being tricked into writing somewhere else.

No fixed names: a temporary file is made with ``O_CREAT|O_EXCL|O_NOFOLLOW``
under a random name (``tempfile.mkstemp``), so a symlink someone planted at a
guessed name is never followed, and it replaces its target by ``rename``,
which replaces a directory entry and never writes through a link.
"""

from __future__ import annotations

import os
import stat
import tempfile

from .errors import UsageError

__all__ = ["check_target", "open_new_file", "write_file_atomic", "write_private_temp"]

KEPT_MODE = 0o755  # of an existing target's permission bits, what its replacement keeps: no write for others


def check_target(path: str, special_ok: bool = False) -> os.stat_result | None:
    """``lstat(path)``, None when missing; a symlink is refused, and so is
    what is not a regular file unless ``special_ok``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"cannot write {path}: it is a symlink, which pyxdp does not write through; "
                         "give the real path")
    if not stat.S_ISREG(st.st_mode) and not special_ok:
        raise UsageError(f"cannot write {path}: not a regular file")
    return st


def open_new_file(path: str, mode: int = 0o600) -> int:
    """A new, empty file of the caller's own (``mode``, random name, O_EXCL)
    put in place of ``path`` at once by ``rename``, open for writing; returns
    its fd. Whatever file was at ``path`` is replaced, never truncated or
    written into (it may be another user's, and stays theirs under the old
    inode). A symlink or a non-regular file at ``path`` is refused
    (:class:`UsageError`), as is any failure."""
    check_target(path)
    directory, base = os.path.split(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        os.replace(tmp, path)
    except OSError as exc:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    return fd


def write_file_atomic(path: str, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` (``str`` is encoded as UTF-8) to ``path`` all or nothing:
    into a new temporary file ``.NAME.XXXXXXXX`` in the target's directory
    (created with O_EXCL|O_NOFOLLOW, so a planted symlink is never followed),
    fsync'ed, then renamed over ``path``; readers see the old file or the new
    one, never a part. The new file is the writer's (root's, for the CLI),
    whoever owned the old one. A new file gets ``mode``; an existing target's
    permission bits are kept, except that group and others never get write
    (a file another user could edit, now owned by root, would be trusted as
    root's), nor set-id bits.

    A target that is a symlink is refused with :class:`UsageError` rather than
    replaced or followed (root writing through a link someone planted could
    overwrite any file; replacing the link would surprise whoever made it):
    give the real path. So is one that is not a regular file. Any other failure
    (no permission, disk full) is a :class:`UsageError` "cannot write PATH:
    REASON" (a missing directory names the ``mkdir -p`` to run); the temporary
    file is removed."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    directory, base = os.path.split(os.path.abspath(path))
    st = check_target(path)
    if st is not None:
        mode = stat.S_IMODE(st.st_mode) & KEPT_MODE
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.")
    except FileNotFoundError:
        raise UsageError(f"cannot write {path}: there is no directory {directory} (mkdir -p {directory})") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def write_private_temp(prefix: str, data: str, suffix: str = ".log") -> str:
    """Write ``data`` (UTF-8) to a new file only the caller can read (mode
    0600, random name, O_EXCL) in the temporary directory and return its
    path: ``$TMPDIR`` (or /tmp), but not ``$TMPDIR`` under sudo or setuid
    (see :func:`pyxdp.libbpf.environment_trusted`). For things like the
    verifier's log. Failure raises :class:`UsageError`."""
    from .kernel.libbpf import environment_trusted

    directory = tempfile.gettempdir() if environment_trusted() else "/tmp"
    try:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    except OSError as exc:
        raise UsageError(f"cannot make a temporary file in {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
    except OSError as exc:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    return path
