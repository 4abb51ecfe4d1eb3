"""Generates pyxdp/kernel/_libbpf_ffi.py: the cffi declarations of the libbpf subset
pyxdp uses, pre-parsed (cffi's out-of-line ABI mode). Nothing is compiled: the
output is plain Python that cffi turns into types at import, without parsing C.

    python tools/build_ffi.py            # rewrite pyxdp/kernel/_libbpf_ffi.py
    python tools/build_ffi.py --check    # exit 1 when the committed file is stale
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from cffi import FFI

# Layouts follow libbpf 1.1's headers; every opts struct starts with `sz`, so
# a newer libbpf accepts them as they are.
CDEF = r"""
typedef unsigned char __u8;
typedef unsigned int __u32;
typedef unsigned long long __u64;

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct ring_buffer;

struct bpf_object_open_opts {
    size_t sz;
    const char *object_name;
    bool relaxed_maps;
    const char *pin_root_path;
    __u32 _removed_attach_prog_fd;
    const char *kconfig;
    const char *btf_custom_path;
    char *kernel_log_buf;
    size_t kernel_log_size;
    __u32 kernel_log_level;
};

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    __u32 data_size_in;
    __u32 data_size_out;
    const void *ctx_in;
    void *ctx_out;
    __u32 ctx_size_in;
    __u32 ctx_size_out;
    __u32 retval;
    int repeat;
    __u32 duration;
    __u32 flags;
    __u32 cpu;
    __u32 batch_size;
};

struct bpf_map_batch_opts {
    size_t sz;
    __u64 elem_flags;
    __u64 flags;
};

typedef int (*libbpf_print_fn_t)(int level, const char *fmt, void *args);
libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);
int libbpf_num_possible_cpus(void);

struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);
__u32 bpf_map__max_entries(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
int bpf_map__set_value_size(struct bpf_map *map, __u32 size);
__u32 bpf_map__map_flags(const struct bpf_map *map);
int bpf_map__set_pin_path(struct bpf_map *map, const char *path);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
int bpf_map__set_autocreate(struct bpf_map *map, bool autocreate);
void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);

const char *bpf_program__name(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_program__type(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);

int bpf_map_create(int map_type, const char *map_name, __u32 key_size, __u32 value_size, __u32 max_entries,
                   const void *opts);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
int bpf_prog_get_fd_by_id(__u32 id);
int bpf_map_get_fd_by_id(__u32 id);

int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         __u32 *count, const struct bpf_map_batch_opts *opts);

int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);

typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx,
                                     const void *opts);
int ring_buffer__poll(struct ring_buffer *rb, int timeout_ms);
int ring_buffer__consume(struct ring_buffer *rb);
void ring_buffer__free(struct ring_buffer *rb);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);
"""

OUT = Path(__file__).resolve().parent.parent / "pyxdp" / "kernel" / "_libbpf_ffi.py"


def generate(path: Path) -> None:
    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source("pyxdp.kernel._libbpf_ffi", None)
    builder.emit_python_code(str(path))


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "ffi.py"
            generate(fresh)
            if fresh.read_bytes() != OUT.read_bytes():
                print(f"stale: {OUT.name}; run python tools/build_ffi.py", file=sys.stderr)
                return 1
        return 0
    generate(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
