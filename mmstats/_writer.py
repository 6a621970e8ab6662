"""The stats file of one process: creation, growth, thread slots and fork.

A :class:`FileWriter` owns one memory-mapped file.  Records are allocated
under a lock (a new metric, a new thread, a new request slot); the values
inside them are then written without any lock or system call by the one
thread that owns the record.  See docs/FORMAT.md for the layout.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import logging
import mmap
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _format as F

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
# How often, at most, a writer checks that its file is still in its
# directory (one stat of the path, from the request recorder's finish and
# from allocations).
FILE_CHECK_SECONDS = 2.0
# O_PATH opens a directory to hold and check it, without needing read access.
_O_PATH: int = getattr(os, "O_PATH", os.O_RDONLY)
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def default_directory() -> str:
    """Return the private per-user stats directory used when none is given."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "mmstats")
    return f"/tmp/mmstats-{os.getuid()}"


def is_directory(value: object) -> bool:
    """Return whether a directory setting names one: a non-empty str path.

    An empty one would mean the current directory, which is never meant
    (an unset variable, most likely).
    """
    if not isinstance(value, str | os.PathLike):
        return False
    path = os.fspath(value)
    return isinstance(path, str) and path != ""


DIRECTORY_RULE = "a non-empty path"


def resolve_directory(directory: str | os.PathLike[str] | None) -> tuple[str, bool]:
    """Return the stats directory and whether it is the private default."""
    if directory is not None:
        return os.path.abspath(os.fspath(directory)), False
    env = os.environ.get("MMSTATS_DIR")
    if env:
        return os.path.abspath(env), False
    return default_directory(), True


def file_token() -> str:
    """Return the random part of a new file's name."""
    return os.urandom(4).hex()


def hostname() -> str:
    """Return this host's name, as gethostname(2) gives it (without importing
    socket, which costs a process that writes stats milliseconds to load)."""
    return os.uname().nodename


def default_name() -> str:
    """Return the app name used in file names: ``MMSTATS_NAME`` or the program."""
    name = os.environ.get("MMSTATS_NAME")
    if not name:
        program = sys.argv[0] if sys.argv and sys.argv[0] else "python"
        if program == "-c":  # python -c '...'
            program = "python"
        name = os.path.basename(program)
        if name == "__main__.py":  # python -m package: name the package
            name = os.path.basename(os.path.dirname(program))
    return safe_name(name)


def safe_name(name: str) -> str:
    """Return ``name`` reduced to characters that are safe in a file name."""
    if name.endswith(".py"):
        name = name[:-3]
    cleaned = "".join(c if c in _NAME_OK else "_" for c in name)[:40]
    # Not a file name that a command line takes for an option.
    return cleaned.lstrip("-") or "app"


def open_directory(path: str, private: bool) -> int:
    """Create the stats directory if needed, check it and return an fd on it.

    The checks apply to the directory the fd refers to, opened without
    following a symlink, and files are then created relative to that fd:
    swapping the path for something else after the check changes nothing.

    :raises OSError: when the directory cannot be created or is unsafe; the
        message names the path and the reason.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        if private:
            raise
        os.makedirs(path, 0o700, exist_ok=True)

    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(f"{path!r} is a symlink, not a directory")
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path!r} is not a directory")
    flags = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise OSError(f"{path!r} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{path!r} is not a directory")
        _check_directory(path, st, private)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_directory(path: str, st: os.stat_result, private: bool) -> None:
    uid = os.getuid()
    mode = stat.S_IMODE(st.st_mode)
    if private:
        if st.st_uid != uid:
            raise OSError(f"{path!r} is owned by uid {st.st_uid}, not {uid}")
        if mode & 0o077:
            raise OSError(f"{path!r} has mode {mode:o}, not 700")
    elif mode & 0o002 and not mode & stat.S_ISVTX:
        # Anyone could remove, rename or plant files in it.
        raise OSError(
            f"{path!r} is world-writable (mode {mode:o}) without the sticky "
            f"bit and owned by uid {st.st_uid}"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(f"{path!r} is not writable by uid {uid}")


def _read_proc(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def process_start_ticks(pid: int) -> int:
    """Return field 22 of ``/proc/<pid>/stat`` (0 when unknown)."""
    return process_state(pid)[1]


def process_state(pid: int) -> tuple[str, int]:
    """Return fields 3 (state, ``Z`` for a zombie) and 22 of ``/proc/<pid>/stat``.

    ``("", 0)`` when unknown.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "", 0
    try:
        # One line of well under a page, whole in one read: a reader asks
        # this of every live worker.
        text = os.read(fd, 4096).decode("ascii", "replace")
    except OSError:
        return "", 0
    finally:
        os.close(fd)
    # The command name in parentheses may hold spaces; fields follow the last ")".
    tail = text.rpartition(")")[2].split()
    try:
        return tail[0], int(tail[19])
    except (IndexError, ValueError):
        return "", 0


def boot_time() -> float:
    """Return the Unix time of the last boot (0.0 when unknown)."""
    for line in _read_proc("/proc/stat").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def pid_namespace() -> int:
    """Return the inode of this process's pid namespace (0 when unknown)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def boot_id() -> str:
    """Return the kernel's boot id, which tells reboots and hosts apart."""
    return _read_proc("/proc/sys/kernel/random/boot_id").strip()


def _command_line() -> str:
    raw = _read_proc("/proc/self/cmdline")
    return raw.replace("\x00", " ").strip() or " ".join(sys.argv)


class _Chunk:
    """One mapped piece of the file, with byte, int64 and float64 views."""

    __slots__ = ("mm", "b", "q", "d", "offset", "size")

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, offset=offset)
        self.b = memoryview(self.mm)
        self.q = self.b.cast("q")
        self.d = self.b.cast("d")
        self.offset = offset
        self.size = size


class Cell:
    """A record's location: the chunk views and the word index of its payload.

    ``generation`` is the writer's generation when the record was allocated:
    once the writer moves to a new file (after a fork, or when the file was
    removed), a record of an older generation belongs to another file.
    """

    __slots__ = ("q", "d", "b", "word", "byte", "generation")

    def __init__(self, chunk: Any, byte: int, generation: int = 0) -> None:
        self.q = chunk.q
        self.d = chunk.d
        self.b = chunk.b
        self.byte = byte
        self.word = byte // 8
        self.generation = generation


class _Sink:
    """Views over private memory, used when stats are off for this process."""

    def __init__(self, size: int) -> None:
        self.mm = bytearray(F.round8(size) + 8 * F.CELL_PAYLOAD)
        self.b = memoryview(self.mm)
        self.q = self.b.cast("q")
        self.d = self.b.cast("d")


class _ThreadToken:
    """Lives in a thread's local storage; gives the thread slot back at exit."""

    __slots__ = ("slot", "writer", "generation", "__weakref__")

    def __init__(self, writer: FileWriter, slot: int) -> None:
        self.slot = slot
        self.writer = writer
        self.generation = writer.generation

    def __del__(self) -> None:
        writer = self.writer
        if writer.generation == self.generation:
            # list.append is atomic under the GIL; no lock at thread exit.
            writer.free_thread_slots.append(self.slot)


class FileWriter:
    """The stats file of this process for one directory."""

    def __init__(
        self, directory: str, private: bool, name: str, source: str | None = None
    ) -> None:
        self.directory = directory
        self.private = private
        # What sets the directory, named in the warning when it is unusable;
        # None for the private default.
        self.source = source
        self.name = name
        self.lock = threading.Lock()
        self.generation = 0
        self._reset_state()
        self.reset_hooks: list[Callable[[], None]] = []

    def _reset_state(self) -> None:
        self.path: str | None = None
        self.fd = -1
        self.pid = os.getpid()
        self.chunks: list[_Chunk] = []
        self.header: _Chunk | None = None
        self.end = F.HEADER_SIZE  # next free byte in the file
        self.file_size = 0
        self.disabled: str | None = None
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino)
        self.next_check = 0.0
        self.metric_ids: dict[Any, int] = {}
        self.free_thread_slots: list[int] = []
        self.next_thread_slot = 0
        self.local = threading.local()

    # -- thread slots -------------------------------------------------------

    def thread_slot(self) -> int:
        """Return the calling thread's slot number, taking one if needed."""
        token = getattr(self.local, "token", None)
        if token is not None:
            return int(token.slot)
        with self.lock:
            if self.free_thread_slots:
                slot = min(self.free_thread_slots)
                self.free_thread_slots.remove(slot)
            else:
                slot = self.next_thread_slot
                self.next_thread_slot += 1
        self.local.token = _ThreadToken(self, slot)
        return slot

    # -- the file -------------------------------------------------------------

    def _open(self) -> None:
        """Create this process's file; on failure switch stats off, once.

        The file is written under a temporary name and then linked to its
        final name, so a reader never sees a file without its header, and
        ``link`` fails rather than replace or follow anything planted there.
        Both names are opened relative to the checked directory's fd, with
        ``O_EXCL | O_NOFOLLOW``: no symlink is ever followed or written
        through.
        """
        if self.path is not None or self.disabled is not None:
            return
        path = None
        try:
            dfd = open_directory(self.directory, self.private)
            try:
                token = file_token()
                base = f"{self.name}.{os.getpid()}.{token}"
                path = os.path.join(self.directory, base + F.SUFFIX)
                fd, chunk, identity = self._create(dfd, base)
            finally:
                os.close(dfd)
        except Exception as exc:  # OSError, or the host's name failing to encode
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            self._disable(path or self.directory, reason)
            return

        self.fd = fd
        self.identity = identity
        self.file_size = CHUNK_SIZE
        self.chunks.append(chunk)
        self.header = chunk
        self.path = path
        self._close_at_exit()
        log.debug("Created stats file %s for pid %d", path, os.getpid())

    def _close_at_exit(self) -> None:
        """Close the file also when the process ends without running atexit.

        A multiprocessing child (fork or forkserver) ends with ``os._exit()``
        once its target returned, after running multiprocessing's
        finalizers: its exit is clean, and is marked by one of them.  The
        lowest priority runs it after the others, once the child's own
        children were stopped.
        """
        util = sys.modules.get("multiprocessing.util")
        if util is not None:
            util.Finalize(None, self.close, exitpriority=-(2**31))

    def _create(self, dfd: int, base: str) -> tuple[int, _Chunk, tuple[int, int]]:
        """Create ``base``.mmstats in the directory ``dfd``, header written."""
        tmp = f".{base}.new"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        try:
            os.posix_fallocate(fd, 0, CHUNK_SIZE)
            chunk = _Chunk(fd, 0, CHUNK_SIZE)
            self._write_header(chunk)
            os.link(
                tmp,
                base + F.SUFFIX,
                src_dir_fd=dfd,
                dst_dir_fd=dfd,
                follow_symlinks=False,
            )
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
        return fd, chunk, (st.st_dev, st.st_ino)

    def _disable(self, path: str, reason: str) -> None:
        self.disabled = reason
        if self.source is None:
            log.warning(
                "Stats are off for pid %d: cannot use %r, the private default: "
                "%s; set MMSTATS_DIR to a writable directory you own.",
                os.getpid(),
                path,
                reason,
            )
            return
        log.warning(
            "Stats are off for pid %d: cannot use %r: %s; set %s to a writable "
            "directory you own.",
            os.getpid(),
            path,
            reason,
            self.source,
        )

    def _write_header(self, chunk: _Chunk) -> None:
        pid = os.getpid()
        ticks = process_start_ticks(pid)
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        started = boot_time() + ticks / hz if ticks else time.time()
        b, q, d = chunk.b, chunk.q, chunk.d
        b[F.H_MAGIC : F.H_MAGIC + 8] = F.MAGIC
        b[F.H_VERSION : F.H_VERSION + 4] = F.VERSION.to_bytes(4, F.NATIVE_ORDER)
        b[F.H_HEADER_SIZE : F.H_HEADER_SIZE + 4] = F.HEADER_SIZE.to_bytes(
            4, F.NATIVE_ORDER
        )
        q[F.H_BYTE_ORDER // 8] = F.BYTE_ORDER_MARK
        q[F.H_PID // 8] = pid
        q[F.H_START_TICKS // 8] = ticks
        d[F.H_START_TIME // 8] = started
        d[F.H_CREATED // 8] = time.time()
        q[F.H_PIDNS // 8] = pid_namespace()
        put_string(b, F.H_BOOT_ID, F.BOOT_ID_SIZE, boot_id().encode())
        put_string(b, F.H_HOSTNAME, F.HOSTNAME_SIZE, F.encode(hostname()))
        put_string(b, F.H_NAME, F.NAME_SIZE, self.name.encode())
        put_string(b, F.H_COMMAND, F.COMMAND_SIZE, _command_line().encode())
        # The used length goes last: it tells a reader the header is complete.
        q[F.H_USED // 8] = F.HEADER_SIZE

    def allocate(self, rtype: int, size: int, fill: Callable[[Any, int], None]) -> Any:
        """Allocate a record, let ``fill`` write its body, then publish it.

        Call with :attr:`lock` held.  Returns a :class:`Cell` at the record
        start, or a cell in private memory when stats are off.
        """
        if self.path is None:
            self._open()
        if self.disabled is not None:
            return Cell(_Sink(size), 0, self.generation)

        size = F.round8(size)
        chunk = self.chunks[-1]
        offset = self.end - chunk.offset
        if offset + size > chunk.size:
            try:
                chunk = self._grow(size)
            except OSError as exc:
                assert self.header is not None
                # Tell readers: what is added from now on is not in the file.
                self.header.q[F.H_FLAGS // 8] |= F.FLAG_GROW_FAILED
                self._disable(self.path or self.directory, exc.strerror or str(exc))
                return Cell(_Sink(size), 0, self.generation)
            offset = self.end - chunk.offset

        fill(chunk, offset)
        chunk.b[offset : offset + 8] = F.RECORD_HEAD.pack(rtype, size)
        self.end += size
        assert self.header is not None
        # Publish: a reader reads records only up to the used length.
        self.header.q[F.H_USED // 8] = self.end
        return Cell(chunk, offset, self.generation)

    def _grow(self, size: int) -> _Chunk:
        """Map a new chunk at the end of the file, padding the old one's tail."""
        old = self.chunks[-1]
        tail = old.offset + old.size - self.end
        new_size = max(CHUNK_SIZE, (size + CHUNK_SIZE - 1) // CHUNK_SIZE * CHUNK_SIZE)
        # fallocate, not ftruncate: a hole that cannot be filled on a full
        # disk would kill the process with SIGBUS on its first store.
        os.posix_fallocate(self.fd, self.file_size, new_size)
        chunk = _Chunk(self.fd, self.file_size, new_size)
        if tail:
            start = self.end - old.offset
            old.b[start : start + 8] = F.RECORD_HEAD.pack(F.R_PAD, tail)
        self.chunks.append(chunk)
        self.file_size += new_size
        self.end = chunk.offset
        log.debug("Grew stats file %s to %d bytes", self.path, self.file_size)
        return chunk

    def metric_id(
        self, key: Any, kind: int, meta: dict[str, Any], **params: Any
    ) -> int:
        """Return the id of a metric in this file, writing its record once."""
        mid = self.metric_ids.get(key)
        if mid is not None:
            return mid
        mid = len(self.metric_ids) + 1
        try:
            blob = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:  # a lone surrogate in a name: JSON escapes it
            blob = json.dumps(meta, separators=(",", ":")).encode()
        fixed = F.METRIC_FIXED

        def fill(chunk: Any, off: int) -> None:
            packed = fixed.pack(
                0,
                0,
                mid,
                kind,
                params.get("flags", 0),
                params.get("nbuckets", 0),
                params.get("lo", 0.0),
                params.get("gamma", 0.0),
                params.get("text_max", 0),
                len(blob),
            )
            chunk.b[off : off + fixed.size] = packed
            chunk.b[off + fixed.size : off + fixed.size + len(blob)] = blob

        self.allocate(F.R_METRIC, fixed.size + len(blob), fill)
        self.metric_ids[key] = mid
        return mid

    def cell(self, mid: int, tslot: int, payload: int) -> Cell:
        """Allocate a zeroed cell record for metric ``mid`` and thread ``tslot``."""

        def fill(chunk: Any, off: int) -> None:
            chunk.b[off + 8 : off + 16] = F.CELL_FIXED.pack(0, 0, mid, tslot)[8:]

        cell: Cell = self.allocate(F.R_CELL, F.CELL_PAYLOAD + payload, fill)
        if self.disabled is None:
            cell.byte += F.CELL_PAYLOAD
            cell.word += F.CELL_PAYLOAD // 8
        return cell

    def heartbeat(self, now: float) -> None:
        """Record the time of the last finished request in the header."""
        if self.header is not None:
            self.header.d[F.H_HEARTBEAT // 8] = now

    def close(self) -> None:
        """Mark the file closed cleanly; values stay readable."""
        if self.header is None or self.pid != os.getpid():
            return
        self.header.d[F.H_CLOSED_AT // 8] = time.time()
        self.header.q[F.H_CLOSED // 8] = 1

    # -- a file removed under a live process ------------------------------------

    def check(self, now: float) -> None:
        """Start a new file if this one was removed; at most every few seconds.

        ``now`` is a ``time.perf_counter()`` reading.  Costs one ``stat`` per
        :data:`FILE_CHECK_SECONDS`, and nothing between.
        """
        if now < self.next_check:
            return
        self.next_check = now + FILE_CHECK_SECONDS
        if os.getpid() != _forked_pid:
            after_fork_in_child()  # forked by something that ran no hook
            return
        if self.file_removed():
            self.reopen()

    def file_removed(self) -> bool:
        """Return whether this process's file is gone from its directory.

        Gone means its name is missing, its directory is, or the name now
        belongs to another file.
        """
        path = self.path
        if path is None or self.pid != os.getpid():
            return False
        try:
            st = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:
            return False  # cannot tell (permissions changed): keep writing
        return (st.st_dev, st.st_ino) != self.identity

    def reopen(self) -> None:
        """Drop a removed file and write to a new one from the next write on.

        Nothing is carried over: the removed file's values were removed with
        it.  Records of the old file held by other threads are dropped, not
        unmapped, so a write racing this call lands in the old mapping.
        """
        with self.lock:
            if not self.file_removed():
                return  # another thread did it already
            log.warning(
                "Stats file %r of pid %d was removed; writing a new file from now on.",
                self.path,
                os.getpid(),
            )
            fd = self.fd
            self.generation += 1
            self._reset_state()
            for hook in list(self.reset_hooks):
                hook()
        os.close(fd)

    def reset_after_fork(self) -> None:
        """Forget the parent's file: the child writes a new file of its own.

        The parent's mappings are dropped, not unmapped, so stale views can
        never fault; they are only ever written through records of the old
        generation, which nothing reaches any more.
        """
        fd = self.fd
        self.lock = threading.Lock()
        self.generation += 1
        self._reset_state()
        for hook in list(self.reset_hooks):
            hook()
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)  # the child's copy; the parent keeps its own


def put_string(b: Any, offset: int, size: int, data: bytes) -> None:
    """Write ``data`` as u16 length + bytes into a ``size`` byte field."""
    data = F.cut_utf8(data, size - 2)
    b[offset : offset + 2] = len(data).to_bytes(2, F.NATIVE_ORDER)
    b[offset + 2 : offset + 2 + len(data)] = data


# One writer (one file) per directory in a process: a process is one worker
# to every reader, whatever names its Stats objects give.
_writers: dict[str, FileWriter] = {}
_writers_lock = threading.Lock()


def get_writer(
    directory: str | os.PathLike[str] | None,
    name: str | None,
    directory_source: str | None = None,
) -> FileWriter:
    """Return the process's writer for a directory, making it once.

    The app name of the first call names the file; a later call with
    another name writes into the same file, or a process would show as two
    workers.  ``directory_source`` names what set ``directory`` (a setting,
    a config key), for the warning when the directory is unusable; the
    writer keeps the one it was made with.
    """
    path, private = resolve_directory(directory)
    if directory is not None:
        source: str | None = directory_source or "the directory argument"
    elif not private:
        source = "the MMSTATS_DIR environment variable"
    else:
        source = None
    writer = _writers.get(path)
    if writer is None:
        with _writers_lock:
            writer = _writers.get(path)
            if writer is None:
                app = safe_name(name) if name else default_name()
                writer = FileWriter(path, private, app, source)
                _writers[path] = writer
    return writer


_fork_hooks: list[Callable[[], None]] = []
_forked_pid = os.getpid()


def on_fork(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every child process, before it writes anything."""
    _fork_hooks.append(hook)


def after_fork_in_child() -> None:
    """Forget everything of the parent: run by every fork path we can see.

    ``os.fork()`` runs it through :func:`os.register_at_fork`; uWSGI, which
    forks from C without those hooks, through ``uwsgi.post_fork_hook``; and
    :meth:`FileWriter.check` when it finds the pid changed anyway.
    """
    global _writers_lock, _forked_pid
    if _forked_pid == os.getpid():
        return  # already done for this process
    _forked_pid = os.getpid()
    # A lock held by another thread at fork time would never be released.
    _writers_lock = threading.Lock()
    for hook in list(_fork_hooks):
        hook()
    for writer in list(_writers.values()):
        writer.reset_after_fork()


def _install_uwsgi_hook() -> None:
    """Chain our reset into uWSGI's post-fork hook when running under uWSGI."""
    try:
        uwsgi = importlib.import_module("uwsgi")  # exists only inside uWSGI
    except ImportError:
        return
    previous = getattr(uwsgi, "post_fork_hook", None)

    def post_fork() -> None:
        after_fork_in_child()
        if previous is not None:
            previous()

    setattr(uwsgi, "post_fork_hook", post_fork)  # noqa: B010


def _close_all() -> None:
    for writer in list(_writers.values()):
        writer.close()


os.register_at_fork(after_in_child=after_fork_in_child)
atexit.register(_close_all)
_install_uwsgi_hook()
