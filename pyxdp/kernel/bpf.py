"""BPF objects: open a ``.bpf.o``, pin its maps, load it, and use its programs
and maps as Python objects (bytes in, bytes out), with batch operations, a
ring-buffer reader and BPF_PROG_TEST_RUN. Built on :mod:`pyxdp.kernel.libbpf`."""

from __future__ import annotations

import errno
import os
import struct
import sys
from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

from ..errors import IncompatibleMap, UsageError, VerifierError, bpf_error
from .libbpf import check, check_ptr, environment_trusted, ffi, lib, num_possible_cpus

if TYPE_CHECKING:
    from typing import Any

# bpf_map_update_elem flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2


class MapType(IntEnum):
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    RINGBUF = 27

    @property
    def percpu(self) -> bool:
        return self in (MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH)


class MapSpec(NamedTuple):
    """What the kernel knows of a map's shape."""

    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int

    def differences(self, other: MapSpec) -> list[str]:
        """Human-readable list of fields in which ``other`` differs from self."""
        out = []
        for field in ("type", "key_size", "value_size", "max_entries", "flags"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                out.append(f"{field} {theirs} (pinned) != {mine} (wanted)")
        return out


_MAP_INFO = struct.Struct("=IIIIII16sIIQQIIIIQ")
_PROG_INFO = struct.Struct("=II8sIIQQQIIQ16s")


def _obj_info(fd: int, what: str) -> bytes:
    buf = ffi.new("char[]", 256)
    size = ffi.new("__u32 *", 256)
    check(lib.bpf_obj_get_info_by_fd(fd, buf, size), what)
    return bytes(ffi.buffer(buf, size[0]))


def _close(fd: int, _os_close: Callable[[int], None] = os.close) -> None:
    if fd >= 0:
        _os_close(fd)  # (bound at import: at interpreter exit module globals may be gone)


class _Fd:
    """An owned file descriptor: close() it or use the object as a context manager."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        _close(fd)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self, _finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        # Nothing is imported here: at interpreter exit that fails ("sys.meta_path is None"), so then it
        # only closes. Not imported yet, warnings would ignore a ResourceWarning anyway (its default
        # filters; -W and -X dev import it at start).
        if getattr(self, "_fd", -1) < 0:
            return
        try:
            warnings = sys.modules.get("warnings")
            if warnings is not None and not _finalizing():
                warnings.warn(f"unclosed {type(self).__name__}", ResourceWarning, stacklevel=2)
        finally:
            self.close()


class Map(_Fd):
    """A BPF map. Keys and values are ``bytes`` of the map's sizes; per-CPU
    maps take and return one value per possible CPU, concatenated.
    Test hook: $PYXDP_TEST_KILL_AFTER=N SIGKILLs the process after its Nth change (if environment_trusted()):
    a map write, a pin, or a netlink change of an interface (see :func:`kill_point`)."""

    _kill_after: int | None = None  # PYXDP_TEST_KILL_AFTER, read on the first write (0: off)
    _writes = 0

    @classmethod
    def _wrote(cls) -> None:
        """Count one map write (the crash-injection hook above)."""
        if cls._kill_after is None:
            raw = os.environ.get("PYXDP_TEST_KILL_AFTER", "")
            cls._kill_after = int(raw) if raw.isdigit() and raw.isascii() and environment_trusted() else 0
        if cls._kill_after:
            cls._writes += 1
            if cls._writes >= cls._kill_after:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)

    def __init__(self, fd: int, name: str, spec: MapSpec, map_id: int = 0) -> None:
        super().__init__(fd)
        self.name = name
        self.spec = spec
        self.id = map_id
        self.type = spec.type
        self.key_size = spec.key_size
        self.value_size = spec.value_size
        self.percpu = spec.type in (5, 6, 10)
        self._vsize = ((spec.value_size + 7) // 8 * 8) * num_possible_cpus() if self.percpu else spec.value_size

    @property
    def value_bytes(self) -> int:
        """Bytes of one value as lookup/update take it (all CPUs for per-CPU maps)."""
        return self._vsize

    @classmethod
    def from_fd(cls, fd: int) -> Map:
        """Wrap (and own) a map fd, reading its shape from the kernel."""
        (mtype, map_id, ks, vs, me, flags, name, *_rest) = _MAP_INFO.unpack_from(
            _obj_info(fd, "map info").ljust(_MAP_INFO.size, b"\0")
        )
        return cls(fd, name.rstrip(b"\0").decode(), MapSpec(mtype, ks, vs, me, flags), map_id)

    @classmethod
    def create(cls, mtype: MapType, name: str, key_size: int, value_size: int, max_entries: int) -> Map:
        """A new map of the control plane's own (no program uses it), unpinned."""
        fd = check(lib.bpf_map_create(int(mtype), name.encode(), key_size, value_size, max_entries, ffi.NULL),
                   f"create map {name}")
        try:
            return cls.from_fd(fd)
        except BaseException:
            _close(fd)
            raise

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        """Open the map with kernel id ``map_id`` (e.g. one a program uses)."""
        fd = check(lib.bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")
        try:
            return cls.from_fd(fd)
        except BaseException:
            _close(fd)
            raise

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> Map:
        """Open a pinned map."""
        fd = check(lib.bpf_obj_get(os.fsencode(os.fspath(path))), f"open pinned map {path}")
        try:
            return cls.from_fd(fd)
        except BaseException:
            _close(fd)
            raise

    def _key(self, key: bytes) -> Any:
        if len(key) != self.key_size:
            raise UsageError(f"map {self.name}: key of {len(key)} bytes, want {self.key_size}")
        return ffi.from_buffer(key)

    def lookup(self, key: bytes) -> bytes | None:
        val = ffi.new("char[]", self._vsize)
        ret = lib.bpf_map_lookup_elem(self.fd, self._key(key), val)
        if ret == -errno.ENOENT:
            return None
        check(ret, f"lookup in map {self.name}")
        return bytes(ffi.buffer(val, self._vsize))

    def __getitem__(self, key: bytes) -> bytes:
        val = self.lookup(key)
        if val is None:
            raise bpf_error(errno.ENOENT, f"map {self.name}: no such key")
        return val

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self._vsize:
            raise UsageError(f"map {self.name}: value of {len(value)} bytes, want {self._vsize}")
        ret = lib.bpf_map_update_elem(self.fd, self._key(key), ffi.from_buffer(value), flags)
        Map._wrote()
        check(ret, f"update map {self.name}")

    __setitem__ = update

    def delete(self, key: bytes) -> None:
        ret = lib.bpf_map_delete_elem(self.fd, self._key(key))
        Map._wrote()
        check(ret, f"delete from map {self.name}")

    def keys(self) -> Iterator[bytes]:
        cur = ffi.NULL
        nxt = ffi.new("char[]", self.key_size)
        while True:
            ret = lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if ret == -errno.ENOENT:
                return
            check(ret, f"iterate map {self.name}")
            key = bytes(ffi.buffer(nxt, self.key_size))
            yield key
            cur = ffi.new("char[]", key)

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def items(self, chunk: int = 8192) -> Iterator[tuple[bytes, bytes]]:
        """All (key, value) pairs, read in batches where the kernel allows."""
        ks, vs = self.key_size, self._vsize
        for keys, vals in self.batches(chunk):
            for i in range(len(keys) // ks):
                yield keys[i * ks : (i + 1) * ks], vals[i * vs : (i + 1) * vs]

    def batches(self, chunk: int = 8192) -> Iterator[tuple[bytes, bytes]]:
        """All keys and values, as (keys, values) byte strings of up to
        ``chunk`` elements each (``key_size`` and ``value_bytes`` apart),
        read with batch lookups where the kernel allows (one element per
        pair otherwise). An array's elements come in index order."""
        ks, vs = self.key_size, self._vsize
        keys = ffi.new("char[]", ks * chunk)
        vals = ffi.new("char[]", vs * chunk)
        count = ffi.new("__u32 *")
        out_batch = ffi.new("char[]", max(ks, 8))
        in_batch = ffi.NULL
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        while True:
            count[0] = chunk
            ret = lib.bpf_map_lookup_batch(self.fd, in_batch, out_batch, keys, vals, count, opts)
            if ret < 0 and ret not in (-errno.ENOENT,):
                if -ret in (errno.EINVAL, errno.EOPNOTSUPP, 524) and in_batch == ffi.NULL:  # no batch op: walk
                    for k in self.keys():
                        v = self.lookup(k)
                        if v is not None:
                            yield k, v
                    return
                check(ret, f"read map {self.name}")
            if count[0]:
                yield bytes(ffi.buffer(keys, ks * count[0])), bytes(ffi.buffer(vals, vs * count[0]))
            if ret == -errno.ENOENT:
                return
            in_batch = out_batch
            out_batch = ffi.new("char[]", max(ks, 8))

    def array_values(self, start: int, count: int, chunk: int = 8192) -> bytes:
        """The values at indexes ``start`` to ``start + count - 1`` of an array
        map (fewer when it ends sooner), ``value_bytes`` apart, in batch reads:
        the kernel's generic batch starts after the key it is given, so the
        first batch is given ``start - 1``. One lookup per index where the
        kernel has no batch reads."""
        ks, vs = self.key_size, self._vsize
        count = max(min(count, self.spec.max_entries - start), 0)
        vals = ffi.new("char[]", vs * max(min(chunk, count), 1))
        keys = ffi.new("char[]", ks * max(min(chunk, count), 1))
        n = ffi.new("__u32 *")
        out_batch = ffi.new("char[]", max(ks, 8))
        in_batch = ffi.NULL if start == 0 else ffi.new("char[]", (start - 1).to_bytes(ks, sys.byteorder))
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        parts: list[bytes] = []
        got = 0
        while got < count:
            n[0] = min(chunk, count - got)
            ret = lib.bpf_map_lookup_batch(self.fd, in_batch, out_batch, keys, vals, n, opts)
            if ret < 0 and ret != -errno.ENOENT:
                if -ret in (errno.EINVAL, errno.EOPNOTSUPP, 524) and not parts:  # no batch op: look each up
                    return b"".join(self.lookup(i.to_bytes(ks, sys.byteorder)) or bytes(vs)
                                    for i in range(start, start + count))
                check(ret, f"read map {self.name}")
            parts.append(bytes(ffi.buffer(vals, vs * n[0])))
            got += n[0]
            if ret == -errno.ENOENT or not n[0]:
                break
            in_batch = out_batch  # the kernel reads it before it writes the next one there
        return b"".join(parts)

    def keys_fast(self, chunk: int = 65536) -> Iterator[bytes]:
        """All keys, read with batch lookups (values are read and dropped)."""
        for k, _v in self.items(chunk):
            yield k

    def update_batch(self, keys: bytes, values: bytes, elem_flags: int = BPF_ANY) -> int:
        """Write ``len(keys) // key_size`` elements in one call. Returns how many
        were written; a failure raises, with ``done`` set on the exception."""
        n = len(keys) // self.key_size
        if n * self.key_size != len(keys) or n * self._vsize != len(values):
            raise UsageError(f"map {self.name}: batch buffers do not match the map's sizes")
        if n == 0:
            return 0
        count = ffi.new("__u32 *", n)
        opts = ffi.new(
            "struct bpf_map_batch_opts *",
            {"sz": ffi.sizeof("struct bpf_map_batch_opts"), "elem_flags": elem_flags},
        )
        ret = lib.bpf_map_update_batch(self.fd, ffi.from_buffer(keys), ffi.from_buffer(values), count, opts)
        Map._wrote()
        if ret < 0:
            exc = bpf_error(-ret, f"batch update of map {self.name}")
            exc.done = count[0]  # type: ignore[attr-defined]
            raise exc
        return int(count[0])

    def delete_batch(self, keys: bytes) -> int:
        n = len(keys) // self.key_size
        if n == 0:
            return 0
        count = ffi.new("__u32 *", n)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        ret = lib.bpf_map_delete_batch(self.fd, ffi.from_buffer(keys), count, opts)
        Map._wrote()
        if ret < 0:
            exc = bpf_error(-ret, f"batch delete from map {self.name}")
            exc.done = count[0]  # type: ignore[attr-defined]
            raise exc
        return int(count[0])

    def pin(self, path: str | os.PathLike[str]) -> None:
        ret = lib.bpf_obj_pin(self.fd, os.fsencode(os.fspath(path)))
        Map._wrote()
        check(ret, f"pin map {self.name} at {path}")


def kill_point() -> None:
    """Count one change that is not a map write (a netlink change, a pin)
    for the crash-injection hook of :class:`Map`."""
    Map._wrote()


class TestRun(NamedTuple):
    """Result of BPF_PROG_TEST_RUN: the program's return value, the kernel's
    average time per repetition in ns, and the packet as the program left it."""

    retval: int
    duration_ns: int
    data_out: bytes


class ProgInfo(NamedTuple):
    type: int
    id: int
    tag: str
    name: str


class Program(_Fd):
    """A loaded BPF program."""

    def __init__(self, fd: int, name: str = "") -> None:
        super().__init__(fd)
        try:
            info = self.info()
        except BaseException:
            self._fd = -1  # the caller still owns fd and closes it
            raise
        self.name = name or info.name
        self.id = info.id
        self.tag = info.tag

    def info(self) -> ProgInfo:
        ptype, pid, tag, *_rest, name = _PROG_INFO.unpack_from(
            _obj_info(self.fd, "program info").ljust(_PROG_INFO.size, b"\0")
        )
        return ProgInfo(ptype, pid, tag.hex(), name.rstrip(b"\0").decode())

    def map_ids(self) -> list[int]:
        """Ids of the maps the program uses (bpf_prog_info.map_ids)."""
        ids = ffi.new("__u32[]", 64)
        buf = ffi.new("char[]", 256)
        # struct bpf_prog_info: nr_map_ids at offset 52, map_ids (a user pointer) at 56
        struct.pack_into("=IQ", ffi.buffer(buf), 52, 64, int(ffi.cast("uintptr_t", ids)))
        size = ffi.new("__u32 *", 256)
        check(lib.bpf_obj_get_info_by_fd(self.fd, buf, size), "program info")
        n = struct.unpack_from("=I", ffi.buffer(buf), 52)[0]
        return [int(ids[i]) for i in range(min(n, 64))]

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> Program:
        fd = check(lib.bpf_obj_get(os.fsencode(os.fspath(path))), f"open pinned program {path}")
        try:
            return cls(fd)
        except BaseException:
            _close(fd)
            raise

    @classmethod
    def from_id(cls, prog_id: int) -> Program:
        fd = check(lib.bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")
        try:
            return cls(fd)
        except BaseException:
            _close(fd)
            raise

    def pin(self, path: str | os.PathLike[str]) -> None:
        ret = lib.bpf_obj_pin(self.fd, os.fsencode(os.fspath(path)))
        kill_point()
        check(ret, f"pin program {self.name} at {path}")

    def test_run(self, data: bytes, repeat: int = 1) -> TestRun:
        """Run the program on one packet through BPF_PROG_TEST_RUN."""
        out = ffi.new("char[]", len(data) + 256)
        buf = ffi.from_buffer(data)
        opts = ffi.new(
            "struct bpf_test_run_opts *",
            {
                "sz": ffi.sizeof("struct bpf_test_run_opts"),
                "data_in": buf,
                "data_size_in": len(data),
                "data_out": out,
                "data_size_out": len(data) + 256,
                "repeat": repeat,
            },
        )
        check(lib.bpf_prog_test_run_opts(self.fd, opts), f"test run of {self.name}")
        return TestRun(int(opts.retval), int(opts.duration), bytes(ffi.buffer(out, opts.data_size_out)))


class BpfObject:
    """An opened ``.bpf.o``. Set capacities and pin paths, then :meth:`load`.
    Maps with ``pinning`` set are pinned under ``pin_root`` and reused when
    already there, after a check that the pinned map has the same shape."""

    LOG_SIZE = 1 << 24

    def __init__(self, path: str | os.PathLike[str], pin_root: str | None = None) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise UsageError(f"no such object file: {self.path}")
        self._log = ffi.new("char[]", self.LOG_SIZE)
        self._keep = [ffi.new("char[]", os.fsencode(pin_root))] if pin_root else []
        opts = ffi.new(
            "struct bpf_object_open_opts *",
            {
                "sz": ffi.sizeof("struct bpf_object_open_opts"),
                "pin_root_path": self._keep[0] if pin_root else ffi.NULL,
                "kernel_log_buf": self._log,
                "kernel_log_size": self.LOG_SIZE,
                "kernel_log_level": 0,
            },
        )
        obj = lib.bpf_object__open_file(os.fsencode(self.path), opts)
        if obj == ffi.NULL:
            err = ffi.errno or errno.EINVAL
            raise UsageError(f"{self.path}: not a loadable BPF object ({os.strerror(err)})")
        self._obj = obj
        self.pin_root = pin_root
        self.loaded = False
        self._maps: dict[str, Any] = {}
        m = lib.bpf_object__next_map(obj, ffi.NULL)
        while m != ffi.NULL:
            self._maps[ffi.string(lib.bpf_map__name(m)).decode()] = m
            m = lib.bpf_object__next_map(obj, m)
        self._progs: dict[str, Any] = {}
        p = lib.bpf_object__next_program(obj, ffi.NULL)
        while p != ffi.NULL:
            self._progs[ffi.string(lib.bpf_program__name(p)).decode()] = p
            p = lib.bpf_object__next_program(obj, p)

    @property
    def map_names(self) -> list[str]:
        return list(self._maps)

    @property
    def program_names(self) -> list[str]:
        return list(self._progs)

    def map_spec(self, name: str) -> MapSpec:
        m = self._maps[name]
        return MapSpec(
            lib.bpf_map__type(m),
            lib.bpf_map__key_size(m),
            lib.bpf_map__value_size(m),
            lib.bpf_map__max_entries(m),
            lib.bpf_map__map_flags(m),
        )

    def set_max_entries(self, name: str, n: int) -> None:
        check(lib.bpf_map__set_max_entries(self._maps[name], n), f"set capacity of map {name}")

    def set_value_size(self, name: str, n: int) -> None:
        check(lib.bpf_map__set_value_size(self._maps[name], n), f"set value size of map {name}")

    def check_pinned(self, name: str, pinned: MapSpec) -> None:
        """Raise IncompatibleMap when a pinned map differs from this object's."""
        diff = self.map_spec(name).differences(pinned)
        if diff:
            raise IncompatibleMap(f"pinned map {name} differs: " + "; ".join(diff))

    def private_map(self, name: str) -> None:
        """Do not pin or reuse ``name``: this instance gets its own."""
        check(lib.bpf_map__set_pin_path(self._maps[name], ffi.NULL), f"unpin map {name}")

    def set_pin_path(self, name: str, path: str | os.PathLike[str]) -> None:
        """Pin ``name`` at ``path`` (or reuse the map pinned there) instead of
        under the pin root by its own name."""
        check(lib.bpf_map__set_pin_path(self._maps[name], ffi.new("char[]", os.fsencode(os.fspath(path)))),
              f"set the pin path of map {name}")

    def set_rodata(self, data: bytes) -> None:
        """Set the initial bytes of the object's ``.rodata`` (its ``const
        volatile`` knobs) before load."""
        names = [n for n in self._maps if n.endswith(".rodata")]
        if not names:
            raise UsageError(f"{self.path}: has no .rodata")
        size = ffi.new("size_t *")
        ptr = lib.bpf_map__initial_value(self._maps[names[0]], size)
        if ptr == ffi.NULL or size[0] < len(data):
            raise UsageError(f"{self.path}: .rodata is {size[0]} bytes, cannot set {len(data)}")
        ffi.memmove(ptr, data, len(data))

    def no_programs(self) -> None:
        """Create the maps only (no program is loaded, nothing is verified)."""
        for p in self._progs.values():
            lib.bpf_program__set_autoload(p, False)

    def only_program(self, *names: str) -> None:
        """Load only the programs ``names`` of the object's programs."""
        for name in names:
            if name not in self._progs:
                have = ", ".join(self._progs) or "none"
                raise UsageError(f"{self.path}: no program named {name} (has: {have})")
        for pname, p in self._progs.items():
            lib.bpf_program__set_autoload(p, pname in names)

    def skip_program(self, name: str) -> None:
        """Do not load program ``name`` (the others stay as they are)."""
        if name in self._progs:
            lib.bpf_program__set_autoload(self._progs[name], False)

    def load(self) -> None:
        ret = lib.bpf_object__load(self._obj)
        if ret < 0:
            log = ffi.string(self._log).decode(errors="replace")
            if log.strip():
                raise VerifierError(-ret, f"loading {os.path.basename(self.path)}", log)
            raise bpf_error(-ret, f"loading {os.path.basename(self.path)}")
        self.loaded = True

    def program(self, name: str | None = None) -> Program:
        """A new, owned handle on a loaded program (the first one if no name)."""
        if not self._progs:
            raise UsageError(f"{self.path}: holds no program")
        if name is None:
            name = next(n for n, p in self._progs.items() if lib.bpf_program__fd(p) >= 0)
        if name not in self._progs:
            raise UsageError(f"{self.path}: no program named {name}")
        fd = check(lib.bpf_program__fd(self._progs[name]), f"program {name} not loaded")
        return Program(os.dup(fd), name)

    def map(self, name: str) -> Map:
        """A new, owned handle on a loaded map."""
        fd = check(lib.bpf_map__fd(self._maps[name]), f"map {name} not created")
        return Map.from_fd(os.dup(fd))

    def close(self) -> None:
        obj, self._obj = self._obj, ffi.NULL
        if obj != ffi.NULL:
            lib.bpf_object__close(obj)

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_obj", ffi.NULL) != ffi.NULL:
            self.close()


class RingBuffer:
    """Reads a BPF ring buffer. ``callback(data: bytes)`` runs for each record;
    an exception it raises stops the poll and is re-raised from :meth:`poll`.

    Memory stays bounded whatever the producer's rate when every :meth:`poll`
    is given a ``limit``: records beyond it stay in the ring for the next
    poll, and while the ring is full the kernel drops new ones (the program
    counts them) instead of this process buffering them."""

    _STOP = -errno.ECANCELED  # what the callback returns to stop at the limit

    def __init__(self, ring: Map, callback: Callable[[bytes], None]) -> None:
        self._exc: BaseException | None = None
        self._callback = callback
        self._left = -1  # records this poll may still hand over; -1: no limit
        self._handled = 0
        self._stopped = False

        def _sample(_ctx: Any, data: Any, size: int) -> int:
            callback(bytes(ffi.buffer(data, size)))
            self._handled += 1
            if self._left > 0:
                self._left -= 1
                if self._left == 0:
                    # libbpf has already moved the consumer past this record and
                    # stops here: the rest stays in the ring for the next poll
                    self._stopped = True
                    return self._STOP
            return 0

        def _error(_type: Any, exc: BaseException, _tb: Any) -> int:
            # whatever _sample raised, also a signal handler's exception (Ctrl-C) raised on its
            # first line, before any try in it could catch it: stored, re-raised after the C call
            # returns, and the poll stops. (Without onerror cffi prints it and the callback returns 0.)
            if self._exc is None:
                self._exc = exc
            return -1

        self._cb = ffi.callback("ring_buffer_sample_fn", _sample, onerror=_error)
        self._rb = check_ptr(lib.ring_buffer__new(ring.fd, self._cb, ffi.NULL, ffi.NULL), "open ring buffer")

    def poll(self, timeout_ms: int = 100, limit: int | None = None) -> int:
        """Wait up to ``timeout_ms`` for records and hand them to the callback;
        returns how many. ``limit`` (1 or more) bounds how many one call hands
        over; the rest stay in the ring (a limited stop is not an error).
        ``None``: all there are, however many arrive meanwhile."""
        if limit is not None and limit < 1:
            raise UsageError(f"ring buffer poll limit must be 1 or more, not {limit}")
        self._left = -1 if limit is None else limit
        self._handled = 0
        self._stopped = False
        try:
            ret = lib.ring_buffer__poll(self._rb, timeout_ms)
        finally:
            self._left = -1
        if self._exc is not None:
            exc, self._exc = self._exc, None
            raise exc
        if self._stopped:
            return self._handled
        if ret == -errno.EINTR:
            return self._handled
        check(ret, "poll ring buffer")
        return self._handled

    def close(self) -> None:
        rb, self._rb = self._rb, ffi.NULL
        if rb != ffi.NULL:
            lib.ring_buffer__free(rb)

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
