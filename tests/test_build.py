"""The committed artefacts match their sources: the BPF objects (rebuilt with
the pinned clang), the pre-parsed cffi declarations, and the Python mirror of
the C structs (checked against the object's BTF)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from pyxdp import layout as L

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJ = os.path.join(TOP, "pyxdp", "xdp_filter.bpf.o")
needs_clang = pytest.mark.skipif(shutil.which("clang-19") is None, reason="needs clang-19 (Debian package clang-19)")
needs_bpftool = pytest.mark.skipif(shutil.which("bpftool") is None, reason="needs bpftool")


@needs_clang
def test_committed_objects_are_up_to_date() -> None:
    r = subprocess.run(["make", "-s", "-C", os.path.join(TOP, "bpf"), "check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs_clang
def test_check_fails_on_a_stale_object(tmp_path: object) -> None:
    copy = os.path.join(str(tmp_path), "tree")
    shutil.copytree(TOP, copy, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", ".hypothesis"))
    with open(os.path.join(copy, "bpf", "xdp_filter.bpf.c"), "a") as fh:
        fh.write("\nint stale_marker_for_the_test;\n")
    r = subprocess.run(["make", "-s", "-C", os.path.join(copy, "bpf"), "check"], capture_output=True, text=True)
    assert r.returncode != 0 and "stale: pyxdp/xdp_filter.bpf.o" in r.stderr


def test_ffi_declarations_are_up_to_date() -> None:
    r = subprocess.run([sys.executable, os.path.join(TOP, "tools", "build_ffi.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _btf_structs() -> dict[str, tuple[int, list[tuple[str, int, int]]]]:
    """struct name -> (size, [(member, bit offset, size in bytes)]) from bpftool's raw dump."""
    raw = subprocess.run(["bpftool", "btf", "dump", "file", OBJ, "format", "raw"], capture_output=True, text=True,
                         check=True).stdout
    types: dict[int, str] = {}
    for line in raw.splitlines():
        m = re.match(r"\[(\d+)\] (\S+) '([^']*)'(.*)", line)
        if m:
            types[int(m.group(1))] = line

    def size_of(tid: int) -> int:
        line = types[tid]
        kind = line.split()[1]
        if kind in ("STRUCT", "UNION", "INT", "ENUM"):
            return int(re.search(r"size=(\d+)", line).group(1))  # type: ignore[union-attr]
        if kind in ("TYPEDEF", "CONST", "VOLATILE"):
            return size_of(int(re.search(r"type_id=(\d+)", line).group(1)))  # type: ignore[union-attr]
        if kind == "ARRAY":
            t = int(re.search(r"type_id=(\d+)", line).group(1))  # type: ignore[union-attr]
            n = int(re.search(r"nr_elems=(\d+)", line).group(1))  # type: ignore[union-attr]
            return size_of(t) * n
        if kind == "PTR":
            return 8
        raise ValueError(line)

    out: dict[str, tuple[int, list[tuple[str, int, int]]]] = {}
    lines = raw.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\[(\d+)\] STRUCT '(\w+)' size=(\d+) vlen=(\d+)", line)
        if not m:
            continue
        members = []
        for j in range(int(m.group(4))):
            mm = re.match(r"\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)", lines[i + 1 + j])
            assert mm, lines[i + 1 + j]
            members.append((mm.group(1), int(mm.group(3)), size_of(int(mm.group(2)))))
        out[m.group(2)] = (int(m.group(3)), members)
    return out


@needs_bpftool
def test_python_layouts_match_btf() -> None:
    btf = _btf_structs()
    for name, fields in L.BTF_STRUCTS.items():
        size, members = btf[name]
        assert size == L.STRUCT_SIZES[name], name
        assert [(m, s) for m, _off, s in members] == fields, name
        offset = 0
        for (_m, bits, s) in members:  # no hidden padding: the Python side packs with "="
            assert bits == offset * 8, (name, _m)
            offset += s
        assert offset == size, name


def _btf_enums() -> dict[str, dict[str, int]]:
    raw = subprocess.run(["bpftool", "btf", "dump", "file", OBJ, "format", "c"], capture_output=True, text=True,
                         check=True).stdout
    out = {}
    for name, body in re.findall(r"enum (\w+) \{(.*?)\}", raw, re.S):
        out[name] = {k: int(v) for k, v in re.findall(r"(\w+) = (-?\d+)", body)}
    return out


@needs_bpftool
def test_python_enums_match_btf() -> None:
    """Every shared enum, value by value (the C names carry a prefix: R_, ACT_, V_, SET_, J_, F_/RS_)."""
    enums = _btf_enums()
    for cname, enum in L.ENUMS.items():
        values = enums[cname]
        named = {k: v for k, v in values.items() if not k.endswith("_MAX")}
        assert sorted(named.values()) == sorted(m.value for m in enum), cname
        for member in enum:
            assert any(k.endswith("_" + member.name) and v == member.value for k, v in named.items()), (cname, member)
    assert enums["reason"]["R_MAX"] == L.N_REASONS
    assert enums["flow_state"]["FS_MAX"] == L.FS_MAX
    assert enums["iface_flags"] == {"IFF_OWN_CLSACT": L.IFF_OWN_CLSACT}


@needs_bpftool
def test_python_constants_match_btf() -> None:
    """The limits the C header defines (enum pyxdp_limits), value by value."""
    limits = _btf_enums()["pyxdp_limits"]
    assert limits == L.LIMITS
