/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the datapath (xdp_filter.bpf.c) and the Python control plane share:
 * constants, enums and the structs kept in maps. This header is the one
 * source of truth: pyxdp/layout.py mirrors it, and tests/test_build.py checks
 * the mirror field by field and value by value against the BTF of the built
 * object (every enum below is kept in BTF by btf_anchor()).
 *
 * Constants are enum values, not macros, so that they reach BTF.
 */
#ifndef PYXDP_H
#define PYXDP_H

enum pyxdp_limits {
	PYXDP_LAYOUT = 4,          /* layout version recorded in the state (struct meta) */
	MAX_RULE_WORDS = 128,      /* 8,192 rules */
	DEFAULT_RULE_WORDS = 16,   /* 1,024 rules; the loader sets knobs.rule_words */
	RULE_SETS = 8,             /* sets referenced per direction (source, destination) */
	PROTO_CLASSES = 5,         /* tcp, udp, icmp, icmpv6, other */
	CLASS_PER_RULE = 6,        /* vector classes one generation may need: 6 r + 1600 */
	CLASS_EXTRA = 1600,
	RULE_TEXT = 192,           /* a rule's canonical text, NUL-padded */
	SET_NAME = 32,             /* a set's name, NUL-padded */
	MAX_SETS = 256,            /* set ids 1..255; 0 is never a set */
	HASHED_MAX = 4,            /* prefix lengths of one set and family served by the hash */
	LEN_SLOTS = 162,           /* per-length counters: IPv4 /0../32 at 0..32, IPv6 /0../128 at 33..161 */
	PORT_DIR_SHIFT = 16,       /* rports index: gen << GEN_SHIFT | dir << PORT_DIR_SHIFT | port */
	GEN_SHIFT = 17,
	SWEEP_TICK_MS = 1000,      /* the expiry sweeper wakes this often; it walks only when something is due */
	MAX_VLAN = 4,              /* stacked 802.1Q/802.1ad tags walked */
	MAX_EXTHDR = 8,            /* IPv6 extension headers walked */
	MAX_L4_OFF = 1024,         /* deeper L4 headers are "too deep" */
	GUARD_WORDS = 1024,        /* a trie guard: one bit per value of an address's first 16 bits */
	IF_SLOTS = 64,             /* per-interface counters: slot 0 counts what no attached interface names */
	IF_HASH = 4096,            /* ifslots is indexed by ifindex % IF_HASH */
	STATS_STRIDE = 20,         /* counters per slot: R_MAX * 2 (reason * 2 + verdict) */
	HEAD_LEN = 128,            /* a traced packet's first bytes carried in its event */
	DEFAULT_FLOWS = 65536,     /* tracked connections (LRU); the loader sets another at creation */
	FLOW_STALE_MS = 1000,      /* egress rewrites a known flow's expiry at most this often */
	CT_GUARD_SLOTS = 3 << 16,  /* the reply guard: (tcp 0, udp 1, icmp echo 2) << 16 | local port or echo id */
	CT_CLOCK = 3 << 16,        /* ctguard's entry after the ports: the sweeper's clock (0: guard not armed) */
};

enum action { ACT_NONE = 0, ACT_ALLOW = 1, ACT_DENY = 2 };

/* Why a packet got its verdict; the stats map counts each (reason, verdict). */
enum reason {
	R_POLICY = 0,
	R_FRAGMENT = 1,
	R_ARP = 2,
	R_ND = 3,
	R_MALFORMED = 4,
	R_TOO_DEEP = 5,
	R_RULE_ALLOW = 6,
	R_RULE_DENY = 7,
	R_ESTABLISHED = 8,         /* a reply in a connection the host opened */
	R_RELATED = 9,             /* an ICMP error about such a connection */
	R_MAX = 10,
};

/* flow.state: where a tracked connection is; also the index of its timeout
 * in config.timeout */
enum flow_state {
	FS_NONE = 0,
	FS_SYN_SENT = 1,           /* the host sent a SYN */
	FS_ESTABLISHED = 2,        /* the host acknowledged the answer */
	FS_FIN = 3,                /* either side sent a FIN */
	FS_CLOSE = 4,              /* the host sent a RST */
	FS_UDP = 5,                /* the host sent a datagram; no answer yet */
	FS_UDP_STREAM = 6,         /* answered */
	FS_ICMP = 7,               /* an echo request */
	FS_MAX = 8,
};

enum verdict { V_PASS = 0, V_DROP = 1 };

/* set_info.state: the life of a set id. An id is FREE only when no element
 * carries it; the control plane hands out FREE ids only. */
enum set_state { SET_FREE = 0, SET_LIVE = 1, SET_STAGED = 2, SET_DRAINING = 3 };

/* journal.op: the multi-map change under way (see pyxdp/state.py) */
enum journal_op { J_NONE = 0, J_SET = 1, J_APPLY = 2, J_DESTROY = 3 };

/* What the state is: written once when the state is made, checked on open. */
struct meta {
	__u32 layout;              /* PYXDP_LAYOUT of the pyxdp that made it */
	__u32 rule_words;          /* rule capacity / 64 */
	__u8 build_id[16];         /* sha256[:16] of the object the pinned program came from */
};

/* The live knobs, double-buffered: cfg[0], cfg[1]; cfg_sel names the live one. */
struct config {
	__u32 policy;              /* enum verdict for unmatched packets */
	__u32 trace_every;         /* 0: tracing off; N: one event per N packets (random) */
	__u32 rgen;                /* the rule-set generation (0/1) packets use */
	__u32 nrules;              /* rules in that generation (0: no rule walk at all) */
	__u32 txn;                 /* the journal's txn of the change that wrote this config */
	__u32 established;         /* 1: replies to flows the host opened pass before the rules */
	__u32 timeout[FS_MAX];     /* seconds a flow lives in each enum flow_state after its last packet */
};

struct selector {
	__u32 live;                /* index of the live cfg slot */
	__u32 pad;
	__u64 switched_ns;         /* CLOCK_MONOTONIC of the last switch (control plane only) */
};

/* The change a writer has under way; a later writer finishes or undoes it. */
struct journal {
	__u32 op;                  /* enum journal_op */
	__u32 txn;                 /* J_APPLY: committed when the live config carries this txn */
	__u32 sid;                 /* J_SET, J_DESTROY: the set touched */
	__u32 pad;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct event {
	__u64 ts;                  /* CLOCK_MONOTONIC ns */
	__u32 ifindex;
	__u32 pkt_len;
	__u8 verdict;
	__u8 reason;
	__u8 family;               /* 4, 6 or 0 */
	__u8 proto;                /* IP protocol of the L4 header found, 0 if none */
	__u16 sport;               /* host order; ICMP: type, code */
	__u16 dport;
	__u8 src[16];
	__u8 dst[16];
	__u8 vlans;
	__u8 fragment;             /* 1: first fragment, 2: later fragment */
	__u16 ethertype;
	__u16 rule;                /* the deciding rule's number (position + 1), 0: none */
	__u16 pad;
	__u32 rule_id;             /* its stable id + 1 (hit counter and definition slot) */
	__u16 cap_len;             /* bytes of the packet in head */
	__u16 pad2;
	__u8 head[HEAD_LEN];       /* the packet's first bytes */
};

struct iface_key {
	__u32 ifindex;
	char netns[60];
};

struct iface_val {
	char ifname[16];
	__u32 mode;
	__u32 prog_id;
	__u32 slot;                /* its counters' slot in stats (1..IF_SLOTS-1; 0: none) */
	__u32 flags;               /* enum iface_flags */
};

enum iface_flags { IFF_OWN_CLSACT = 1 }; /* pyxdp added the interface's clsact qdisc (for egress) */

/* ifslots[ifindex % IF_HASH]: the counter slot of an attached interface */
struct ifslot {
	__u32 ifindex;
	__u32 slot;
};

/* A connection the host opened, keyed as its replies arrive: the remote end
 * (their source) and the local end (their destination). ICMP echo: lport is
 * the identifier, rport 0. The key of flows6; the datapath builds this one
 * for IPv4 too (addresses in the first 4 bytes) and looks it up in flows4 as
 * a flow_key4 (a 16-byte key hashes in half the time of 40). */
struct flow_key {
	__u8 family;               /* 4 or 6 */
	__u8 proto;
	__u16 rport;               /* host order */
	__u16 lport;
	__u16 pad;
	__u8 raddr[16];
	__u8 laddr[16];
};

struct flow_key4 {
	__u8 family;               /* 4 */
	__u8 proto;
	__u16 rport;
	__u16 lport;
	__u16 pad;
	__u32 raddr;               /* network order */
	__u32 laddr;
};

struct flow {
	__u64 expires;             /* CLOCK_MONOTONIC ns (coarse) */
	__u32 state;               /* enum flow_state */
	__u32 syn_ack;             /* TCP: the ISN of the host's last SYN + 1 (host order), the ack
	                            * its answer must carry in syn-sent; 0 for UDP and ICMP. Was
	                            * pad (always 0): same size and layout */
};

struct knobs {
	__u32 trace_all;           /* replay: an event for every packet */
	__u32 count_hits;          /* 0 in replay: live hit counters left alone */
	__u32 rule_words;          /* rule capacity / 64: the bound of the bit-vector walk */
	__u32 shape;               /* enum shape: what this program leaves out (0: nothing) */
};

/*
 * knobs.shape: the parts of the datapath a loaded program leaves out, because
 * the configuration it runs cannot use them (the verifier removes the code a
 * known knob turns off). 0 is the general program. The control plane loads a
 * program whose shape covers the live configuration before it switches to it.
 */
enum shape {
	SH_NO_STATE = 1,           /* no connection-state lookups (config.established is 0) */
	SH_NO_RULES = 2,           /* no rule walk (config.nrules is 0) */
	SH_NO_SETS = 4,            /* no rule names a set */
	SH_NO_PORTS = 8,           /* no rule names a port */
	SH_NO_IFACE = 16,          /* no rule names an interface */
	SH_NO_LIT6 = 32,           /* no rule names an IPv6 prefix */
	SH_NO_LIT4 = 64,           /* no rule names an IPv4 prefix */
	SH_NO_PROTO = 128,         /* no rule names a protocol */
	SH_NO_TRACE = 256,         /* no sampled tracing (config.trace_every is 0) */
	/* Fast paths (not parts left out: code added): taken only while the live
	 * rule set has the form (RS_BAN_FIRST, RS_PORT_RULES in ruleset.fields),
	 * so a program with them is right on any rule set. A program with one
	 * runs the decision inlined in its entry point (no call into finish). */
	SH_BAN_FIRST = 512,        /* rule 1 `deny from @SET`: one inlined probe of the set, before the rule walk */
	SH_PORT_RULES = 1024,      /* the other rules by the port's and the protocol's vectors, inlined */
};

/* ruleset.fields: the fields some rule constrains; the others are not looked up */
enum rule_field {
	F_PROTO = 1, F_SRC = 2, F_SSET = 4, F_DST = 8, F_DSET = 16, F_SPORT = 32, F_DPORT = 64, F_IFACE = 128,
	RS_LIT4_SRC = 256, RS_LIT6_SRC = 512, RS_LIT4_DST = 1024, RS_LIT6_DST = 2048,
	RS_PROTO_NUM = 4096,       /* a rule names another IP protocol: its class is proto_cls[5] + the protocol */
	/* the forms fast paths need (SH_BAN_FIRST, SH_PORT_RULES): rule 1 is `deny from @SET` alone; every rule
	 * (after that one, when RS_BAN_FIRST) constrains at most the protocol and the destination port */
	RS_BAN_FIRST = 8192, RS_PORT_RULES = 16384,
};

struct ruleset {
	__u32 n_words;             /* words of the vectors in use */
	__u32 iface_dflt;          /* class of an interface no rule names */
	__u32 fields;              /* enum rule_field bits */
	__u32 all_cls;             /* class of the all-ones vector (a field no rule constrains) */
	__u32 proto_cls[PROTO_CLASSES + 1]; /* tcp, udp, icmp, icmpv6, other; [5]: RS_PROTO_NUM's block */
	__u32 lit_dflt[4];         /* class when no rule prefix holds the address: [dir * 2 + (v6)] */
	__u32 setb[2];             /* per dir: class of set-hit mask 0; mask m is setb + m */
	__u32 n_sets[2];           /* sets referenced per dir */
	__u32 sets[2][RULE_SETS];  /* their ids */
	__u32 noport[2];           /* per dir: class of a packet without ports */
};

/* Keys of the rule-literal tries (tag = gen * 2 + dir) and of set elements
 * (tag = set id). plen counts the tag's 32 bits. */
struct rkey4 {
	__u32 plen;
	__u32 tag;
	__u32 addr;
};

struct rkey6 {
	__u32 plen;
	__u32 tag;
	__u8 addr[16];
};

/* One element of a set (hash elem4/elem6, the master copy of every element).
 * Visible to packets while born <= epoch of its set, (until == 0 or
 * epoch < until) and (expires == 0 or now < expires). */
struct elem {
	__u64 expires;             /* CLOCK_MONOTONIC ns (read coarse); 0 = never */
	__u64 hits;
	__u32 born;                /* the set epoch that made it visible */
	__u32 until;               /* the set epoch that hides it; 0 = none */
};

/* Per set id, read by packets: which prefix lengths the hash serves (at most
 * HASHED_MAX, in any order), whether the trie holds copies of the elements of
 * the other lengths, and the committed epoch. The control plane changes one
 * byte or one word per write (a slot of lens4/lens6 is one byte), so a packet
 * never sees a half-made layout. */
struct set_info {
	__u8 lens4[HASHED_MAX];    /* 1 + n: IPv4 /n is probed in elem4; 0: slot unused */
	__u8 lens6[HASHED_MAX];    /* 1 + n: IPv6 /n */
	__u32 trie4;               /* 1: trie4 holds this set's elements of the other lengths */
	__u32 trie6;
	__u32 epoch;
	__u32 state;               /* enum set_state (control plane bookkeeping) */
};

/* See tguard in xdp_filter.bpf.c. */
struct trie_guard {
	__u64 w[GUARD_WORDS];
};

/* Elements per prefix length of one set: the control plane's count, and
 * the sweeper's count of the elements it removed (the difference is what is
 * there). */
struct len_counts {
	__u64 n[LEN_SLOTS];
};

/* The set-name table (control plane only): a name's live id, and the id an
 * unfinished apply staged for it. */
struct set_name {
	__u32 live;                /* 0: the name is being made by an apply */
	__u32 staged;              /* 0: none */
	__u32 pending;             /* 1: an apply will replace (staged) or drop (staged 0) it */
	__u32 pad;
};

struct rref {
	__u32 id;                  /* stable id: hit counter and definition slot */
	__u32 action;              /* enum action */
};

struct ifkey {
	__u32 gen;
	__u32 ifindex;
};

/* The expiry sweeper's own record (kernel-written), beside its timer. */
struct sweep_state {
	__u64 next_due;            /* CLOCK_MONOTONIC ns of the next walk */
	__u64 seen_seq;            /* sweep_ctl.seq when the last walk started */
	__u64 walks;
	__u64 removed;
};

/* The control plane's word to the sweeper. */
struct sweep_ctl {
	__u64 hint;                /* an element expiring at this time was added ... */
	__u32 seq;                 /* ... when seq changed since the last walk */
	__u32 hold;                /* non-zero: a writer is refreshing elements; do not walk */
};

#endif
