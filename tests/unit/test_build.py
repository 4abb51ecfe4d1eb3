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

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def _frames(obj: str) -> dict[str, tuple[int, set[str]]]:
    """Per function of ``obj``: its stack depth (the deepest r10 offset it
    touches) and the functions it calls (BPF-to-BPF calls carry a
    relocation naming the callee), from llvm-objdump."""
    out = subprocess.run(["llvm-objdump-19", "-dr", "--no-show-raw-insn", obj], capture_output=True, text=True,
                         check=True).stdout
    funcs: dict[str, tuple[int, set[str]]] = {}
    cur = ""
    fp_regs: set[str] = set()
    for line in out.splitlines():
        head = re.match(r"^[0-9a-f]+ <(\w+)>:", line)
        if head:
            cur = head.group(1)
            funcs[cur] = (0, set())
            fp_regs = set()
            continue
        if not cur:
            continue
        depth, calls = funcs[cur]
        offs = [int(x, 16) for x in re.findall(r"r10 - 0x([0-9a-f]+)\)", line)]
        copy = re.search(r"\b(r\d) = r10$", line)
        if copy:
            fp_regs.add(copy.group(1))
        else:
            add = re.search(r"\b(r\d) \+= -0x([0-9a-f]+)$", line)
            if add and add.group(1) in fp_regs:
                offs.append(int(add.group(2), 16))
            assigned = re.search(r"\b(r\d) [-+*/|&^<>]*= ", line)
            if assigned and not add:
                fp_regs.discard(assigned.group(1))
        callee = re.search(r"R_BPF_64_32\s+(\w+)", line)
        if callee:
            calls.add(callee.group(1))
        funcs[cur] = (max([depth, *offs]), calls)
    return funcs


def _deepest_chain(funcs: dict[str, tuple[int, set[str]]], entry: str, round_to: int) -> tuple[int, list[str]]:
    depth, calls = funcs[entry]
    own = -(-max(depth, 1) // round_to) * round_to
    best: tuple[int, list[str]] = (0, [])
    for c in calls:
        if c in funcs:
            sub = _deepest_chain(funcs, c, round_to)
            best = max(best, sub)
    return own + best[0], [entry, *best[1]]


@pytest.mark.skipif(shutil.which("llvm-objdump-19") is None, reason="needs llvm-objdump-19 (Debian package llvm-19)")
def test_call_chains_fit_older_verifiers_stack() -> None:
    """Kernels before 6.8 (Debian's 6.1) round every frame of a call chain
    up to 32 bytes and refuse a chain over 512 (MAX_BPF_STACK): 6.1 refused
    an object whose frames summed to 448 (544 rounded). Checked here in
    milliseconds instead of in a VM."""
    funcs = _frames(OBJ)
    for entry in ("xdp_filter", "xdp_filter_fast", "egress", "sweep_start"):
        total, chain = _deepest_chain(funcs, entry, 32)
        assert total <= 512, f"{' -> '.join(chain)}: {total} bytes with frames rounded to 32 (6.1 allows 512)"
    total, chain = _deepest_chain(funcs, "xdp_filter", 32)
    assert chain[:2] == ["xdp_filter", "finish"] and total > 256  # the walk sees the chain it must
    total, chain = _deepest_chain(funcs, "xdp_filter_fast", 32)  # the decision inlined: no finish
    assert chain[:2] == ["xdp_filter_fast", "match_rules"] and "finish" not in funcs["xdp_filter_fast"][1]
