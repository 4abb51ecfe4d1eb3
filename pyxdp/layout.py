"""The datapath's constants and struct layouts, mirrored from
bpf/xdp_filter.bpf.c. tests/test_layout.py checks every struct here against
the BTF of the shipped object, so the C source stays the one truth."""

from __future__ import annotations

import struct
from enum import IntEnum


class Action(IntEnum):
    NONE = 0
    ALLOW = 1
    DENY = 2


class Verdict(IntEnum):
    PASS = 0
    DROP = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class Reason(IntEnum):
    SRC_ALLOW = 0
    SRC_DENY = 1
    PORT_ALLOW = 2
    PORT_DENY = 3
    POLICY = 4
    ARP = 5
    ND = 6
    FRAGMENT = 7
    MALFORMED = 8
    TOO_DEEP = 9
    RULE_ALLOW = 10
    RULE_DENY = 11

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


N_REASONS = 12
LOST_SLOT = N_REASONS * 2  # stats slot counting lost trace events
LENS4_SLOTS = 8  # hashed prefix lengths the config can list
LENS6_SLOTS = 8
HASHED_MAX = 4  # lengths the control plane hashes per family; the others go to the LPM trie
PORT_BASE = {"tcp": 0, "udp": 65536}

# XDP return codes
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

# name -> (struct format, field names); "=" is native order, no implicit padding
ENTRY = struct.Struct("=QQII")  # expires, hits, action, plen
KEY4 = struct.Struct("=I4s")  # plen, addr (network order)
KEY6 = struct.Struct("=I16s")
COUNTER = struct.Struct("=QQ")  # packets, bytes
LEN4 = struct.Struct("=I4s")  # plen, mask
LEN6 = struct.Struct("=I16s")
CONFIG_HEAD = struct.Struct("=IIIIIIII")  # policy, trace_every, n4, n6, trie4, trie6, rgen, nrules
CONFIG_SIZE = CONFIG_HEAD.size + LENS4_SLOTS * LEN4.size + LENS6_SLOTS * LEN6.size
EVENT = struct.Struct("=QIIBBBBHH16s16sBBBBHHII")
IFACE_KEY = struct.Struct("=I60s")
IFACE_VAL = struct.Struct("=16sII")
U32 = struct.Struct("=I")
SELECTOR = struct.Struct("=IIQ")  # live slot, pad, switched_ns
KNOBS = struct.Struct("=IIII")  # trace_all, count_hits, rule_words, pad
PROTO_CLASSES = 5
RULE_SETS = 8
# n_words, iface_dflt, flags, pad, proto_cls[6], lit_dflt[4], setb[2], n_sets[2], sets[2][8], noport[2]
RULESET = struct.Struct(f"=IIII{PROTO_CLASSES + 1}I4I2I2I{2 * RULE_SETS}I2I")
RS_IFACE = 1 << 4  # ruleset.flags; bit dir * 2 + (family == 6): rules name prefixes there
RKEY4 = struct.Struct("=II4s")  # plen (with the tag's 32 bits), tag, addr
RKEY6 = struct.Struct("=II16s")
RREF = struct.Struct("=II")  # rule id, action
IFKEY = struct.Struct("=II")  # gen, ifindex
SET_META = struct.Struct("=IIQQ")  # id, pad, n4, n6

# struct name in the C source -> (Struct, [(field, size)]) for the BTF check
BTF_STRUCTS: dict[str, list[tuple[str, int]]] = {
    "entry": [("expires", 8), ("hits", 8), ("action", 4), ("plen", 4)],
    "key4": [("plen", 4), ("addr", 4)],
    "key6": [("plen", 4), ("addr", 16)],
    "counter": [("packets", 8), ("bytes", 8)],
    "len4": [("plen", 4), ("mask", 4)],
    "len6": [("plen", 4), ("mask", 16)],
    "config": [
        ("policy", 4),
        ("trace_every", 4),
        ("n4", 4),
        ("n6", 4),
        ("trie4", 4),
        ("trie6", 4),
        ("rgen", 4),
        ("nrules", 4),
        ("lens4", LENS4_SLOTS * LEN4.size),
        ("lens6", LENS6_SLOTS * LEN6.size),
    ],
    "event": [
        ("ts", 8), ("ifindex", 4), ("pkt_len", 4), ("verdict", 1), ("reason", 1),
        ("family", 1), ("proto", 1), ("sport", 2), ("dport", 2), ("src", 16), ("dst", 16),
        ("plen", 1), ("vlans", 1), ("fragment", 1), ("pad", 1), ("ethertype", 2), ("rule", 2),
        ("rule_id", 4), ("pad2", 4),
    ],
    "ruleset": [
        ("n_words", 4), ("iface_dflt", 4), ("flags", 4), ("pad", 4), ("proto_cls", 4 * (PROTO_CLASSES + 1)),
        ("lit_dflt", 16),
        ("setb", 8), ("n_sets", 8), ("sets", 8 * RULE_SETS), ("noport", 8),
    ],
    "rkey4": [("plen", 4), ("tag", 4), ("addr", 4)],
    "rkey6": [("plen", 4), ("tag", 4), ("addr", 16)],
    "rref": [("id", 4), ("action", 4)],
    "ifkey": [("gen", 4), ("ifindex", 4)],
    "set_meta": [("id", 4), ("pad", 4), ("n4", 8), ("n6", 8)],
    "knobs": [("trace_all", 4), ("count_hits", 4), ("rule_words", 4), ("pad", 4)],
    "iface_key": [("ifindex", 4), ("netns", 60)],
    "selector": [("live", 4), ("pad", 4), ("switched_ns", 8)],
    "iface_val": [("ifname", 16), ("mode", 4), ("prog_id", 4)],
}
STRUCT_SIZES = {
    "entry": ENTRY.size, "key4": KEY4.size, "key6": KEY6.size, "counter": COUNTER.size,
    "len4": LEN4.size, "len6": LEN6.size, "config": CONFIG_SIZE, "event": EVENT.size,
    "iface_key": IFACE_KEY.size, "iface_val": IFACE_VAL.size, "selector": SELECTOR.size,
    "ruleset": RULESET.size, "rkey4": RKEY4.size, "rkey6": RKEY6.size, "rref": RREF.size,
    "ifkey": IFKEY.size, "set_meta": SET_META.size, "knobs": KNOBS.size,
}
ENUMS = {"action": Action, "reason": Reason, "verdict": Verdict}
