"""The datapath's constants, enums and struct layouts, mirrored from
bpf/pyxdp.h (the one source of truth). tests/unit/test_build.py checks every
struct here field by field, and every constant and enum value by value,
against the BTF of the shipped object."""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

# enum pyxdp_limits
PYXDP_LAYOUT = 4
MAX_RULE_WORDS = 128
DEFAULT_RULE_WORDS = 16
RULE_SETS = 8
PROTO_CLASSES = 5
CLASS_PER_RULE = 6
CLASS_EXTRA = 1600
RULE_TEXT = 192
SET_NAME = 32
MAX_SETS = 256
HASHED_MAX = 4
LEN_SLOTS = 162
PORT_DIR_SHIFT = 16
GEN_SHIFT = 17
SWEEP_TICK_MS = 1000
MAX_VLAN = 4
MAX_EXTHDR = 8
MAX_L4_OFF = 1024
GUARD_WORDS = 1024
IF_SLOTS = 64
IF_HASH = 4096
STATS_STRIDE = 20
HEAD_LEN = 128
DEFAULT_FLOWS = 65536
FLOW_STALE_MS = 1000
CT_GUARD_SLOTS = 3 << 16  # the reply guard: (tcp 0, udp 1, icmp echo 2) << 16 | local port or echo id
CT_CLOCK = 3 << 16  # ctguard's entry after the ports: the sweeper's clock (0: guard not armed)
LIMITS = {
    "PYXDP_LAYOUT": PYXDP_LAYOUT, "MAX_RULE_WORDS": MAX_RULE_WORDS, "DEFAULT_RULE_WORDS": DEFAULT_RULE_WORDS,
    "RULE_SETS": RULE_SETS, "PROTO_CLASSES": PROTO_CLASSES, "CLASS_PER_RULE": CLASS_PER_RULE,
    "CLASS_EXTRA": CLASS_EXTRA, "RULE_TEXT": RULE_TEXT, "SET_NAME": SET_NAME, "MAX_SETS": MAX_SETS,
    "HASHED_MAX": HASHED_MAX, "LEN_SLOTS": LEN_SLOTS, "PORT_DIR_SHIFT": PORT_DIR_SHIFT, "GEN_SHIFT": GEN_SHIFT,
    "SWEEP_TICK_MS": SWEEP_TICK_MS, "MAX_VLAN": MAX_VLAN, "MAX_EXTHDR": MAX_EXTHDR, "MAX_L4_OFF": MAX_L4_OFF,
    "GUARD_WORDS": GUARD_WORDS, "IF_SLOTS": IF_SLOTS, "IF_HASH": IF_HASH, "STATS_STRIDE": STATS_STRIDE,
    "HEAD_LEN": HEAD_LEN, "DEFAULT_FLOWS": DEFAULT_FLOWS, "FLOW_STALE_MS": FLOW_STALE_MS,
    "CT_GUARD_SLOTS": CT_GUARD_SLOTS, "CT_CLOCK": CT_CLOCK,
}


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

    def __str__(self) -> str:
        return self.label


class Reason(IntEnum):
    POLICY = 0
    FRAGMENT = 1
    ARP = 2
    ND = 3
    MALFORMED = 4
    TOO_DEEP = 5
    RULE_ALLOW = 6
    RULE_DENY = 7
    ESTABLISHED = 8
    RELATED = 9

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    def __str__(self) -> str:
        return self.label


class FlowState(IntEnum):
    """Where a tracked connection is (C: enum flow_state); also the index
    of its timeout in the config."""

    NONE = 0
    SYN_SENT = 1
    ESTABLISHED = 2
    FIN = 3
    CLOSE = 4
    UDP = 5
    UDP_STREAM = 6
    ICMP = 7

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    def __str__(self) -> str:
        return self.label


FS_MAX = 8


class IdState(IntEnum):
    """The life of a set id (C: enum set_state)."""

    FREE = 0
    LIVE = 1
    STAGED = 2
    DRAINING = 3


class JournalOp(IntEnum):
    NONE = 0
    SET = 1
    APPLY = 2
    DESTROY = 3


class Shape(IntFlag):
    """knobs.shape: the parts of the datapath a loaded program leaves out (0: none)."""

    NO_STATE = 1
    NO_RULES = 2
    NO_SETS = 4
    NO_PORTS = 8
    NO_IFACE = 16
    NO_LIT6 = 32
    NO_LIT4 = 64
    NO_PROTO = 128
    NO_TRACE = 256
    BAN_FIRST = 512  # fast path: one inlined probe of a leading `deny from @SET` (see model/fastpath.py)
    PORT_RULES = 1024  # fast path: the other rules by protocol and destination port, inlined


class RuleField(IntEnum):
    PROTO = 1
    SRC = 2
    SSET = 4
    DST = 8
    DSET = 16
    SPORT = 32
    DPORT = 64
    IFACE = 128
    LIT4_SRC = 256
    LIT6_SRC = 512
    LIT4_DST = 1024
    LIT6_DST = 2048
    PROTO_NUM = 4096  # a rule names another IP protocol: proto_cls[5] + protocol is its class
    BAN_FIRST = 8192  # the rule set's forms the fast paths need (model/fastpath.py)
    PORT_RULES = 16384


N_REASONS = 10
LOST_SLOT = IF_SLOTS * STATS_STRIDE  # stats entry counting lost trace events

# XDP return codes
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

# "=": native order, no implicit padding (the C structs have none either)
META = struct.Struct("=II16s")  # layout, rule_words, build_id
CONFIG = struct.Struct(f"=IIIIII{FS_MAX}I")  # policy, trace_every, rgen, nrules, txn, established, timeout[]
SELECTOR = struct.Struct("=IIQ")  # live slot, pad, switched_ns
JOURNAL = struct.Struct("=IIII")  # op, txn, sid, pad
COUNTER = struct.Struct("=QQ")  # packets, bytes
EVENT = struct.Struct(f"=QIIBBBBHH16s16sBBHHHIHH{HEAD_LEN}s")
IFACE_KEY = struct.Struct("=I60s")
IFACE_VAL = struct.Struct("=16sIIII")  # ifname, mode, prog_id, slot, flags
IFF_OWN_CLSACT = 1  # enum iface_flags: pyxdp added the interface's clsact qdisc
IFF_CHANGING = 1 << 31  # control plane only (no program reads ifaces): a change of this interface is under way
IFSLOT = struct.Struct("=II")  # ifindex, slot
FLOW_KEY = struct.Struct("=BBHHH16s16s")  # family, proto, rport, lport, pad, raddr, laddr (flows6)
FLOW_KEY4 = struct.Struct("=BBHHH4s4s")  # the same for flows4: addresses of 4 bytes
FLOW = struct.Struct("=QII")  # expires, state, syn_ack
KNOBS = struct.Struct("=IIII")  # trace_all, count_hits, rule_words, shape
# n_words, iface_dflt, fields, all_cls, proto_cls[6], lit_dflt[4], setb[2], n_sets[2], sets[2][8], noport[2]
RULESET = struct.Struct(f"=IIII{PROTO_CLASSES + 1}I4I2I2I{2 * RULE_SETS}I2I")
RKEY4 = struct.Struct("=II4s")  # plen (with the tag's 32 bits), tag, addr
RKEY6 = struct.Struct("=II16s")
ELEM = struct.Struct("=QQII")  # expires, hits, born, until
SET_INFO = struct.Struct(f"={HASHED_MAX}s{HASHED_MAX}sIIII")  # lens4, lens6, trie4, trie6, epoch, state
LEN_COUNTS = struct.Struct(f"={LEN_SLOTS}Q")
SET_NAME_VAL = struct.Struct("=IIII")  # live, staged, pending, pad
RREF = struct.Struct("=II")  # rule id, action
IFKEY = struct.Struct("=II")  # gen, ifindex
SWEEP_STATE = struct.Struct("=QQQQ")  # next_due, seen_seq, walks, removed
SWEEP_CTL = struct.Struct("=QII")  # hint, seq, hold
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")

# struct name in the C header -> [(field, size)] for the BTF check
BTF_STRUCTS: dict[str, list[tuple[str, int]]] = {
    "meta": [("layout", 4), ("rule_words", 4), ("build_id", 16)],
    "config": [("policy", 4), ("trace_every", 4), ("rgen", 4), ("nrules", 4), ("txn", 4), ("established", 4),
               ("timeout", 4 * FS_MAX)],
    "selector": [("live", 4), ("pad", 4), ("switched_ns", 8)],
    "journal": [("op", 4), ("txn", 4), ("sid", 4), ("pad", 4)],
    "counter": [("packets", 8), ("bytes", 8)],
    "event": [
        ("ts", 8), ("ifindex", 4), ("pkt_len", 4), ("verdict", 1), ("reason", 1),
        ("family", 1), ("proto", 1), ("sport", 2), ("dport", 2), ("src", 16), ("dst", 16),
        ("vlans", 1), ("fragment", 1), ("ethertype", 2), ("rule", 2), ("pad", 2), ("rule_id", 4), ("cap_len", 2),
        ("pad2", 2), ("head", HEAD_LEN),
    ],
    "iface_key": [("ifindex", 4), ("netns", 60)],
    "iface_val": [("ifname", 16), ("mode", 4), ("prog_id", 4), ("slot", 4), ("flags", 4)],
    "ifslot": [("ifindex", 4), ("slot", 4)],
    "flow_key": [("family", 1), ("proto", 1), ("rport", 2), ("lport", 2), ("pad", 2), ("raddr", 16), ("laddr", 16)],
    "flow_key4": [("family", 1), ("proto", 1), ("rport", 2), ("lport", 2), ("pad", 2), ("raddr", 4), ("laddr", 4)],
    "flow": [("expires", 8), ("state", 4), ("syn_ack", 4)],
    "knobs": [("trace_all", 4), ("count_hits", 4), ("rule_words", 4), ("shape", 4)],
    "ruleset": [
        ("n_words", 4), ("iface_dflt", 4), ("fields", 4), ("all_cls", 4), ("proto_cls", 4 * (PROTO_CLASSES + 1)),
        ("lit_dflt", 16), ("setb", 8), ("n_sets", 8), ("sets", 8 * RULE_SETS), ("noport", 8),
    ],
    "rkey4": [("plen", 4), ("tag", 4), ("addr", 4)],
    "rkey6": [("plen", 4), ("tag", 4), ("addr", 16)],
    "elem": [("expires", 8), ("hits", 8), ("born", 4), ("until", 4)],
    "set_info": [("lens4", HASHED_MAX), ("lens6", HASHED_MAX), ("trie4", 4), ("trie6", 4), ("epoch", 4),
                 ("state", 4)],
    "len_counts": [("n", 8 * LEN_SLOTS)],
    "trie_guard": [("w", 8 * GUARD_WORDS)],
    "set_name": [("live", 4), ("staged", 4), ("pending", 4), ("pad", 4)],
    "rref": [("id", 4), ("action", 4)],
    "ifkey": [("gen", 4), ("ifindex", 4)],
    "sweep_state": [("next_due", 8), ("seen_seq", 8), ("walks", 8), ("removed", 8)],
    "sweep_ctl": [("hint", 8), ("seq", 4), ("hold", 4)],
}
STRUCT_SIZES = {
    "meta": META.size, "config": CONFIG.size, "selector": SELECTOR.size, "journal": JOURNAL.size,
    "counter": COUNTER.size, "event": EVENT.size, "iface_key": IFACE_KEY.size, "iface_val": IFACE_VAL.size,
    "knobs": KNOBS.size, "ruleset": RULESET.size, "rkey4": RKEY4.size, "rkey6": RKEY6.size, "elem": ELEM.size,
    "set_info": SET_INFO.size, "len_counts": LEN_COUNTS.size, "trie_guard": 8 * GUARD_WORDS,
    "set_name": SET_NAME_VAL.size, "rref": RREF.size,
    "ifkey": IFKEY.size, "sweep_state": SWEEP_STATE.size, "sweep_ctl": SWEEP_CTL.size, "ifslot": IFSLOT.size,
    "flow_key": FLOW_KEY.size, "flow_key4": FLOW_KEY4.size, "flow": FLOW.size,
}
# C enum name -> (Python enum, prefix of the C names)
ENUMS = {"action": Action, "reason": Reason, "verdict": Verdict, "set_state": IdState,
         "journal_op": JournalOp, "rule_field": RuleField, "flow_state": FlowState, "shape": Shape}
