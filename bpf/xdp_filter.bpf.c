// SPDX-License-Identifier: GPL-2.0
/*
 * pyxdp datapath: one XDP program that parses a frame once and decides
 *   1. source prefix (IPv4/IPv6, longest match, allow or deny, optional expiry)
 *   2. destination port (tcp/udp, allow or deny)
 *   3. ordered multi-field rules (first match wins), see match_rules
 *   4. default policy (pass or drop)
 * ARP always passes, IPv6 neighbour discovery is never cut by the policy,
 * malformed or too deeply nested headers are dropped. Every decision is
 * counted per reason; tracing sends sampled events to a ring buffer.
 *
 * Prefix index: per family, a hash keyed by (prefix length, masked address)
 * for the few most-populated lengths, and an LPM trie for the others; see
 * match4. The cost does not grow with the number of entries.
 *
 * The struct layouts below are mirrored in pyxdp/layout.py; a test checks the
 * mirror against this object's BTF.
 *
 * BENCH_* macros (never set in the shipped build) cut steps out for
 * benchmarks/variants.py, which times what each step costs.
 */
/*
 * Every struct this program reads is a wire format or UAPI (ethhdr, iphdr,
 * ipv6hdr, tcphdr, udphdr, vlan_hdr, frag_hdr, xdp_md): their layouts cannot
 * change between kernels, so CO-RE relocations on them would be no-ops. They
 * are not free: any relocation makes libbpf parse the kernel's whole BTF at
 * every load (12 ms of a 55 ms load here). The object stays compile-once,
 * run-everywhere by reading only stable layouts.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "../vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
/* IPv6 next-header values (in uapi/linux/in6.h as macros, so not in BTF) */
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60

#define MAX_VLAN 4       /* stacked 802.1Q/802.1ad tags walked */
#define MAX_EXTHDR 8     /* IPv6 extension headers walked */
#define MAX_L3_OFF (14 + 4 * MAX_VLAN)
#define MAX_L4_OFF 1024  /* deeper L4 headers are "too deep" */
#define LENS4_SLOTS 8    /* hashed IPv4 prefix lengths: 4, plus room while one moves */
#define LENS6_SLOTS 8
#define MAX_RULE_WORDS 128   /* 8,192 rules */
#define DEFAULT_RULE_WORDS 16 /* 1,024 rules; the loader sets knobs.rule_words */
#define RULE_SETS 8          /* sets referenced per direction (source, destination) */
#define PROTO_CLASSES 5      /* tcp, udp, icmp, icmpv6, other */
#define DEFAULT_RULES (DEFAULT_RULE_WORDS * 64)
/* vector classes one generation may need for r rules (see pyxdp/rules.py) */
#define CLASSES(r) (6 * (r) + 1600)
#define RS_LIT(dir, v6) (1u << ((dir) * 2 + (v6))) /* ruleset.flags: lookups worth making */
#define RS_IFACE (1u << 4)
#define RULE_TEXT 192        /* a rule's canonical text, NUL-padded */
#define SET_NAME 32

enum action { ACT_NONE = 0, ACT_ALLOW = 1, ACT_DENY = 2 };

enum reason {
	R_SRC_ALLOW = 0,
	R_SRC_DENY = 1,
	R_PORT_ALLOW = 2,
	R_PORT_DENY = 3,
	R_POLICY = 4,
	R_ARP = 5,
	R_ND = 6,
	R_FRAGMENT = 7,
	R_MALFORMED = 8,
	R_TOO_DEEP = 9,
	R_RULE_ALLOW = 10,
	R_RULE_DENY = 11,
	R_MAX = 12,
};

enum verdict { V_PASS = 0, V_DROP = 1 };

struct entry {
	__u64 expires;   /* CLOCK_MONOTONIC ns (read coarse here); 0 = never */
	__u64 hits;
	__u32 action;    /* enum action */
	__u32 plen;      /* the entry's prefix length (an LPM lookup does not say it) */
};

struct key4 {
	__u32 plen;
	__u32 addr;      /* network order, host bits zero */
};

struct key6 {
	__u32 plen;
	__u8 addr[16];
};

/* A prefix length in use and its network-order mask, computed by the control
 * plane so that the datapath probes without branching on the length. */
struct len4 {
	__u32 plen;
	__u32 mask;
};

struct len6 {
	__u32 plen;
	__u32 mask[4];
};

struct config {
	__u32 policy;      /* enum verdict for unmatched packets */
	__u32 trace_every; /* 0: tracing off; N: one event per N packets (random) */
	__u32 n4;          /* number of entries used in lens4 */
	__u32 n6;
	__u32 trie4;       /* 1: lpm4 holds entries (of lengths not in lens4) */
	__u32 trie6;
	__u32 rgen;        /* the rule-set generation (0/1) packets use */
	__u32 nrules;      /* rules in that generation (0: no rule walk at all) */
	struct len4 lens4[LENS4_SLOTS]; /* hashed IPv4 prefix lengths, longest first */
	struct len6 lens6[LENS6_SLOTS];
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct event {
	__u64 ts;        /* CLOCK_MONOTONIC ns */
	__u32 ifindex;
	__u32 pkt_len;
	__u8 verdict;
	__u8 reason;
	__u8 family;     /* 4, 6 or 0 */
	__u8 proto;      /* IP protocol of the L4 header found, 0 if none */
	__u16 sport;     /* host order; ICMP: type, code */
	__u16 dport;
	__u8 src[16];
	__u8 dst[16];
	__u8 plen;       /* matched source prefix length */
	__u8 vlans;
	__u8 fragment;   /* 1: first fragment, 2: later fragment */
	__u8 pad;
	__u16 ethertype;
	__u16 rule;      /* the deciding rule's number (position + 1), 0: none */
	__u32 rule_id;   /* its stable id + 1 (hit counter and definition slot) */
	__u32 pad2;
};

struct iface_key {
	__u32 ifindex;
	char netns[60];
};

struct iface_val {
	char ifname[16];
	__u32 mode;
	__u32 prog_id;
};

/*
 * Knobs fixed before load (const volatile: the verifier prunes what they turn
 * off). `pyxdp-load replay` loads a second instance with trace_all = 1 and
 * count_hits = 0: an event for every test packet, and live hit counters left
 * alone. The attached filter keeps the defaults.
 */
const volatile struct knobs {
	__u32 trace_all;
	__u32 count_hits;
	__u32 rule_words;  /* rule capacity / 64: the bound of the bit-vector walk */
	__u32 pad;
} knobs = { .trace_all = 0, .count_hits = 1, .rule_words = DEFAULT_RULE_WORDS };


/* Never called: keeps struct event and the enums in BTF for the Python
 * layout check (tests/test_build.py). */
__noinline int btf_anchor(struct event *ev, enum action a, enum reason r, enum verdict v)
{
	return ev ? 0 : (int)a + (int)r + (int)v;
}

/* cfg[0] and cfg[1] are two generations; cfg_sel[0] names the live one. */
struct selector {
	__u32 live;        /* index of the live cfg slot */
	__u32 pad;
	__u64 switched_ns; /* CLOCK_MONOTONIC of the last switch (control plane only) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct selector);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cfg_sel SEC(".maps");

/* The prefix index (see match4): a hash of the hashed prefix lengths and an
 * LPM trie of the others, per family. Capacity is set at load (--capacity);
 * entries are allocated as they are added. */
#define PREFIX_MAP(_name, _type, _key)                          \
	struct {                                                \
		__uint(type, _type);                            \
		__uint(max_entries, 1048576);                   \
		__uint(map_flags, BPF_F_NO_PREALLOC);           \
		__type(key, _key);                              \
		__type(value, struct entry);                    \
		__uint(pinning, LIBBPF_PIN_BY_NAME);            \
	} _name SEC(".maps")

PREFIX_MAP(src4, BPF_MAP_TYPE_HASH, struct key4);
PREFIX_MAP(src6, BPF_MAP_TYPE_HASH, struct key6);
PREFIX_MAP(lpm4, BPF_MAP_TYPE_LPM_TRIE, struct key4);
PREFIX_MAP(lpm6, BPF_MAP_TYPE_LPM_TRIE, struct key6);

/* index: 0..65535 tcp destination port, 65536..131071 udp */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ports SEC(".maps");

/* index: reason * 2 + verdict; the last slot counts lost trace events */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, R_MAX * 2 + 1);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* Control-plane bookkeeping: entries per prefix length (IPv4 0..32 at
 * 0..32, IPv6 0..128 at 33..161), so that a length leaves the probe list in
 * cfg when its last entry goes. Never read here. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 33 + 129);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lens_count SEC(".maps");

/* Control-plane bookkeeping of attached interfaces; never read here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct iface_key);
	__type(value, struct iface_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ifaces SEC(".maps");

/*
 * Ordered rules, classified by bit vectors (the scheme of bpf-iptables).
 * Rule i is bit i of a vector of rule_words u64 words. Each field of a packet
 * (protocol, source address, source sets, destination address, destination
 * sets, source port, destination port, interface) maps to a class; a class
 * has the vector of the rules whose field accepts that value. AND the eight
 * vectors; the lowest set bit is the first matching rule. The cost grows
 * with rules / 64, not with rules.
 *
 * Everything a packet reads is kept twice, one copy per generation: the
 * control plane writes the idle generation whole, then switches cfg.rgen.
 * A packet reads rgen once, so it sees one rule set or the other, never a
 * mix. Sets (named prefix lists that rules refer to) are not doubled: their
 * lookups are keyed by a set id, and a replaced set gets a new id.
 */
struct ruleset {
	__u32 n_words;                  /* words of the vectors in use */
	__u32 iface_dflt;               /* class of an interface no rule names */
	__u32 flags;                    /* RS_LIT(dir, v6): rules name prefixes there; RS_IFACE: interfaces */
	__u32 pad;
	__u32 proto_cls[PROTO_CLASSES + 1]; /* tcp, udp, icmp, icmpv6, other */
	__u32 lit_dflt[4];              /* class when no rule prefix holds the address: [dir * 2 + (v6)] */
	__u32 setb[2];                  /* per dir: class of set-hit mask 0; mask m is setb + m */
	__u32 n_sets[2];                /* sets referenced per dir */
	__u32 sets[2][RULE_SETS];       /* their ids */
	__u32 noport[2];                /* per dir: class of a packet without ports */
};

/* rlit4/rlit6: the prefixes that rules name, tag = gen * 2 + dir.
 * set4/set6: the prefixes of sets, tag = set id. plen counts the tag's 32 bits. */
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

struct rref {
	__u32 id;      /* stable id: hit counter and definition slot */
	__u32 action;  /* enum action */
};

struct ifkey {
	__u32 gen;
	__u32 ifindex;
};

struct set_meta {
	__u32 id;
	__u32 pad;
	__u64 n4;      /* prefixes held, per family */
	__u64 n6;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ruleset);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rsets SEC(".maps");

#define RULE_TRIE(_name, _key, _cap)                            \
	struct {                                                \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);            \
		__uint(max_entries, _cap);                      \
		__uint(map_flags, BPF_F_NO_PREALLOC);           \
		__type(key, _key);                              \
		__type(value, __u32);                           \
		__uint(pinning, LIBBPF_PIN_BY_NAME);            \
	} _name SEC(".maps")

/* capacities here are the defaults; the loader sizes them from the rule capacity */
RULE_TRIE(rlit4, struct rkey4, 4 * DEFAULT_RULES);
RULE_TRIE(rlit6, struct rkey6, 4 * DEFAULT_RULES);
RULE_TRIE(set4, struct rkey4, 1 << 24);
RULE_TRIE(set6, struct rkey6, 1 << 24);

/* class -> vector; generation g owns classes [g * n / 2, (g + 1) * n / 2) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * CLASSES(DEFAULT_RULES));
	__uint(key_size, 4);
	__uint(value_size, DEFAULT_RULE_WORDS * 8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rvec SEC(".maps");

/* index: gen << 17 | dir << 16 | port -> class */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * 65536);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, struct ifkey);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} riface SEC(".maps");

/* index: gen * rules + position -> the rule there */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * DEFAULT_RULES);
	__type(key, __u32);
	__type(value, struct rref);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rorder SEC(".maps");

/* index: rule id */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * DEFAULT_RULES);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rhits SEC(".maps");

/* Control plane only: each rule's text by id, and the sets by name. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * DEFAULT_RULES);
	__uint(key_size, 4);
	__uint(value_size, RULE_TEXT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rdefs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__uint(key_size, SET_NAME);
	__type(value, struct set_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} set_names SEC(".maps");

struct pkt {
	__u16 ethertype;
	__u8 vlans;
	__u8 family;
	__u8 proto;
	__u8 fragment;
	__u8 has_ports;
	__u8 is_nd;
	__u8 hop255;     /* IPv6 hop limit is 255: the packet cannot come from off-link */
	__u8 pad[3];
	__u16 rule_pos;  /* deciding rule's position + 1 */
	__u16 pad2;
	__u32 rule_id;   /* its id + 1 */
	__u16 sport;
	__u16 dport;
	__u32 saddr4;
	__u32 daddr4;
	struct in6_addr saddr6;
	struct in6_addr daddr6;
};

static __always_inline int is_exthdr(__u32 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
	       nh == IPPROTO_FRAGMENT || nh == IPPROTO_AH;
}

/*
 * Global (__noinline, non-static) functions are verified once, on their own;
 * inlined code is verified once per path that reaches it. Every VLAN depth
 * times every IPv6 extension-header chain is a path, so the extension-header
 * walk and everything after parsing (finish) are global functions: loading
 * went from 0.2 s to 0.05 s. Each call costs a few ns per packet here, so the
 * common path (no extension headers) makes only one: finish.
 */

/* Reads the L4 header at off. Returns a reason on error, -1 when fine. */
static __always_inline int parse_l4(void *data, void *end, struct pkt *p, __u64 off)
{
	if (p->fragment == 2)
		return -1; /* a later fragment: bytes here are payload, not a header */
	if (off > MAX_L4_OFF)
		return R_TOO_DEEP;
	void *cur = data + off;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *t = cur;
		if ((void *)(t + 1) > end)
			return R_MALFORMED;
		p->sport = bpf_ntohs(t->source);
		p->dport = bpf_ntohs(t->dest);
		p->has_ports = 1;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *u = cur;
		if ((void *)(u + 1) > end)
			return R_MALFORMED;
		p->sport = bpf_ntohs(u->source);
		p->dport = bpf_ntohs(u->dest);
		p->has_ports = 1;
	} else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
		__u8 *ic = cur;
		if ((void *)(ic + 4) > end)
			return R_MALFORMED;
		p->sport = ic[0];
		p->dport = ic[1];
		/* neighbour discovery is link-local by rule: hop limit 255 (RFC 4861) */
		if (p->proto == IPPROTO_ICMPV6 && p->family == 6 && p->hop255 && ic[0] >= 133 && ic[0] <= 137)
			p->is_nd = 1;
	}
	return -1;
}

/* Walks the IPv6 extension headers from off; sets p->proto and p->fragment. */
__noinline int parse_ipv6_ext(struct xdp_md *ctx, struct pkt *p, __u64 off, __u32 nh)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	if (!p)
		return R_MALFORMED;
	for (int i = 0; i < MAX_EXTHDR; i++) {
		if (!is_exthdr(nh))
			break;
		if (off > MAX_L4_OFF)
			return R_TOO_DEEP;
		__u8 *h = data + off;
		if ((void *)(h + 8) > end)
			return R_MALFORMED;
		if (nh == IPPROTO_FRAGMENT) {
			__u16 fo = ((__u16)h[2] << 8) | h[3];
			if (fo & 0xfff8)
				p->fragment = 2;
			else if (fo & 1)
				p->fragment = 1;
			off += 8;
		} else if (nh == IPPROTO_AH) {
			off += ((__u32)h[1] + 2) * 4;
		} else {
			off += ((__u32)h[1] + 1) * 8;
		}
		nh = h[0];
		if (p->fragment == 2)
			break; /* the rest is payload of a later fragment */
	}
	if (p->fragment != 2 && is_exthdr(nh))
		return R_TOO_DEEP;
	p->proto = nh;
	return parse_l4(data, end, p, off);
}

/* IPv4 or IPv6 header at off (after Ethernet and VLAN tags). */
static __always_inline int parse_l3(struct xdp_md *ctx, void *data, void *end, struct pkt *p, __u64 off)
{
	if (off > MAX_L3_OFF)
		return R_MALFORMED;
	if (p->ethertype == ETH_P_IP) {
		struct iphdr *ip = data + off;
		if ((void *)(ip + 1) > end)
			return R_MALFORMED;
		if (ip->version != 4 || ip->ihl < 5)
			return R_MALFORMED;
		if ((void *)ip + ip->ihl * 4 > end)
			return R_MALFORMED;
		p->family = 4;
		p->saddr4 = ip->saddr;
		p->daddr4 = ip->daddr;
		p->proto = ip->protocol;
		__u16 frag = bpf_ntohs(ip->frag_off);
		if (frag & 0x1fff)
			p->fragment = 2;
		else if (frag & 0x2000)
			p->fragment = 1;
		return parse_l4(data, end, p, off + ip->ihl * 4);
	}
	if (p->ethertype == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > end)
			return R_MALFORMED;
		if (ip6->version != 6)
			return R_MALFORMED;
		p->family = 6;
		p->hop255 = ip6->hop_limit == 255;
		__builtin_memcpy(&p->saddr6, &ip6->saddr, 16);
		__builtin_memcpy(&p->daddr6, &ip6->daddr, 16);
		p->proto = ip6->nexthdr;
		if (is_exthdr(ip6->nexthdr))
			return parse_ipv6_ext(ctx, p, off + sizeof(*ip6), ip6->nexthdr);
		return parse_l4(data, end, p, off + sizeof(*ip6));
	}
	return -1;
}

static __always_inline int parse(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u64 off = sizeof(*eth);
	__u16 proto;

	if ((void *)(eth + 1) > end)
		return R_MALFORMED;
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < MAX_VLAN; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vh = data + off;
		if ((void *)(vh + 1) > end)
			return R_MALFORMED;
		proto = vh->h_vlan_encapsulated_proto;
		off += sizeof(*vh);
		p->vlans++;
	}
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return R_TOO_DEEP;
	p->ethertype = bpf_ntohs(proto);
	return parse_l3(ctx, data, end, p, off);
}

/* An entry counts only while it has not expired; *now is read lazily. */
static __always_inline int live(struct entry *e, __u64 *now)
{
	if (!e->expires)
		return 1;
	if (!*now)
		*now = bpf_ktime_get_coarse_ns();
	return *now < e->expires;
}

/*
 * Prefix matching, inlined into finish (verified once). Returns -1 for no
 * live match, else (action << 8) | prefix length, and counts the hit on the
 * entry that matched.
 */
static __always_inline int hit(struct entry *e, __u32 plen)
{
	if (knobs.count_hits)
		__sync_fetch_and_add(&e->hits, 1);
	return (int)((e->action << 8) | plen);
}

/*
 * The longest live prefix holding the source. The few most-populated prefix
 * lengths (the control plane picks at most four) live in a hash per family,
 * keyed by (length, masked address); all other lengths live in an LPM trie.
 * One trie lookup (only when the trie holds anything) gives the best trie
 * match; then the hashed lengths longer than it are probed, longest first.
 * An expired trie entry sends the lookup on to shorter prefixes.
 */
/* The longest live entry of an LPM trie holding key's address. key starts
 * with its prefix length (struct key4/key6), set to the longest on entry; an
 * expired entry sends the walk on to shorter prefixes, at most steps times. */
static __always_inline struct entry *trie_longest_live(void *trie, void *key, int steps, __u64 *now)
{
	__u32 *plen = key;

	for (int i = 0; i < steps; i++) {
		struct entry *e = bpf_map_lookup_elem(trie, key);
		if (!e)
			return NULL;
		if (live(e, now))
			return e;
		if (!e->plen)
			return NULL;
		*plen = e->plen - 1;
	}
	return NULL;
}

static __always_inline int match4(__u32 cfg_idx, __u32 saddr)
{
	struct config *c = bpf_map_lookup_elem(&cfg, &cfg_idx);
	struct entry *trie = NULL;
	int trie_len = -1;
	struct key4 k;
	__u64 now = 0;

	if (!c)
		return -1;
	if (c->trie4) {
		k.plen = 32;
		k.addr = saddr;
		trie = trie_longest_live(&lpm4, &k, 33, &now);
		if (trie)
			trie_len = trie->plen;
	}
	for (__u32 i = 0; i < LENS4_SLOTS; i++) {
		if (i >= c->n4 || (int)c->lens4[i].plen <= trie_len)
			break;
		k.plen = c->lens4[i].plen;
		k.addr = saddr & c->lens4[i].mask;
		struct entry *e = bpf_map_lookup_elem(&src4, &k);
		if (e && live(e, &now))
			return hit(e, k.plen);
	}
	return trie ? hit(trie, trie_len & 0xff) : -1;
}

static __always_inline int match6(__u32 cfg_idx, __u32 a0, __u32 a1, __u32 a2, __u32 a3)
{
	struct config *c = bpf_map_lookup_elem(&cfg, &cfg_idx);
	struct entry *trie = NULL;
	int trie_len = -1;
	struct key6 k;
	__u32 *kw = (__u32 *)k.addr;
	__u64 now = 0;

	if (!c)
		return -1;
	if (c->trie6) {
		k.plen = 128;
		kw[0] = a0;
		kw[1] = a1;
		kw[2] = a2;
		kw[3] = a3;
		trie = trie_longest_live(&lpm6, &k, 129, &now);
		if (trie)
			trie_len = trie->plen;
	}
	for (__u32 i = 0; i < LENS6_SLOTS; i++) {
		if (i >= c->n6 || (int)c->lens6[i].plen <= trie_len)
			break;
		struct len6 *l = &c->lens6[i];
		k.plen = l->plen;
		kw[0] = a0 & l->mask[0];
		kw[1] = a1 & l->mask[1];
		kw[2] = a2 & l->mask[2];
		kw[3] = a3 & l->mask[3];
		struct entry *e = bpf_map_lookup_elem(&src6, &k);
		if (e && live(e, &now))
			return hit(e, k.plen);
	}
	return trie ? hit(trie, trie_len & 0xff) : -1;
}

/* Index of the lowest set bit of a non-zero word (BPF has no ctz). */
static __always_inline __u32 lowest_bit(__u64 w)
{
	__u32 n = 0;

	if (!(w & 0xffffffffULL)) { n += 32; w >>= 32; }
	if (!(w & 0xffff)) { n += 16; w >>= 16; }
	if (!(w & 0xff)) { n += 8; w >>= 8; }
	if (!(w & 0xf)) { n += 4; w >>= 4; }
	if (!(w & 0x3)) { n += 2; w >>= 2; }
	if (!(w & 0x1)) n += 1;
	return n;
}

/* The classes of one address of the packet (dir 0 source, 1 destination):
 * the rule prefixes holding it (*lit), and which referenced sets hold it
 * (*setc: the class of that hit mask). */
static __always_inline void addr_classes(struct ruleset *rs, __u32 gen, __u32 dir, struct pkt *p,
					 __u32 *lit, __u32 *setc)
{
	__u32 mask = 0, *v;

	if (p->family == 4) {
		struct rkey4 k = { .plen = 64, .tag = gen * 2 + dir, .addr = dir ? p->daddr4 : p->saddr4 };
		v = rs->flags & RS_LIT(dir, 0) ? bpf_map_lookup_elem(&rlit4, &k) : NULL;
		*lit = v ? *v : rs->lit_dflt[dir * 2];
		for (__u32 i = 0; i < RULE_SETS; i++) {
			if (i >= rs->n_sets[dir])
				break;
			k.tag = rs->sets[dir][i];
			if (bpf_map_lookup_elem(&set4, &k))
				mask |= 1 << i;
		}
	} else {
		struct rkey6 k = { .plen = 160, .tag = gen * 2 + dir };
		__builtin_memcpy(k.addr, dir ? &p->daddr6 : &p->saddr6, 16);
		v = rs->flags & RS_LIT(dir, 1) ? bpf_map_lookup_elem(&rlit6, &k) : NULL;
		*lit = v ? *v : rs->lit_dflt[dir * 2 + 1];
		for (__u32 i = 0; i < RULE_SETS; i++) {
			if (i >= rs->n_sets[dir])
				break;
			k.tag = rs->sets[dir][i];
			if (bpf_map_lookup_elem(&set6, &k))
				mask |= 1 << i;
		}
	}
	*setc = rs->setb[dir] + mask;
}

/*
 * The first rule of generation gen that the packet (IPv4 or IPv6) matches.
 * Returns its action (and notes it in p), or -1. A global function: the walk
 * below is verified once, and a packet pays the call only when rules exist.
 */
__noinline int match_rules(struct xdp_md *ctx, struct pkt *p, __u32 gen)
{
	__u32 c_proto, c_src, c_sset, c_dst, c_dset, c_sport, c_dport, c_if, pc, k, *v;

	if (!ctx || !p)
		return -1;
	gen &= 1;
	struct ruleset *rs = bpf_map_lookup_elem(&rsets, &gen);
	if (!rs)
		return -1;
	pc = p->proto == IPPROTO_TCP ? 0 : p->proto == IPPROTO_UDP ? 1 : p->proto == IPPROTO_ICMP ? 2 :
	     p->proto == IPPROTO_ICMPV6 ? 3 : 4;
	c_proto = rs->proto_cls[pc & 7];
	addr_classes(rs, gen, 0, p, &c_src, &c_sset);
	addr_classes(rs, gen, 1, p, &c_dst, &c_dset);
	c_sport = rs->noport[0];
	c_dport = rs->noport[1];
	if (p->has_ports) {
		k = gen << 17 | p->sport;
		v = bpf_map_lookup_elem(&rports, &k);
		if (v)
			c_sport = *v;
		k = gen << 17 | 1 << 16 | p->dport;
		v = bpf_map_lookup_elem(&rports, &k);
		if (v)
			c_dport = *v;
	}
	struct ifkey ik = { .gen = gen, .ifindex = ctx->ingress_ifindex };
	v = rs->flags & RS_IFACE ? bpf_map_lookup_elem(&riface, &ik) : NULL;
	c_if = v ? *v : rs->iface_dflt;

	__u64 *a = bpf_map_lookup_elem(&rvec, &c_proto);
	__u64 *b = bpf_map_lookup_elem(&rvec, &c_src);
	__u64 *c = bpf_map_lookup_elem(&rvec, &c_sset);
	__u64 *d = bpf_map_lookup_elem(&rvec, &c_dst);
	__u64 *e = bpf_map_lookup_elem(&rvec, &c_dset);
	__u64 *f = bpf_map_lookup_elem(&rvec, &c_sport);
	__u64 *g = bpf_map_lookup_elem(&rvec, &c_dport);
	__u64 *h = bpf_map_lookup_elem(&rvec, &c_if);
	if (!a || !b || !c || !d || !e || !f || !g || !h)
		return -1;
	__u32 words = rs->n_words;
	for (__u32 i = 0; i < knobs.rule_words && i < MAX_RULE_WORDS; i++) {
		if (i >= words)
			break;
		__u64 w = a[i] & b[i] & c[i] & d[i] & e[i] & f[i] & g[i] & h[i];
		if (!w)
			continue;
		__u32 pos = i * 64 + lowest_bit(w);
		__u32 slot = gen * knobs.rule_words * 64 + pos;
		struct rref *r = bpf_map_lookup_elem(&rorder, &slot);
		if (!r)
			return -1;
		if (knobs.count_hits) {
			__u32 id = r->id;
			struct counter *cnt = bpf_map_lookup_elem(&rhits, &id);
			if (cnt) {
				cnt->packets++;
				cnt->bytes += ctx->data_end - ctx->data;
			}
		}
		p->rule_pos = pos + 1;
		p->rule_id = r->id + 1;
		return r->action;
	}
	return -1;
}

static __always_inline int decide(struct xdp_md *ctx, __u32 cfg_idx, struct config *c, struct pkt *p,
				  __u8 *plen, __u32 *verdict)
{
	__u64 now = 0;
	int m = -1;

	if (p->ethertype == ETH_P_ARP) {
		*verdict = V_PASS;
		return R_ARP;
	}
#ifndef BENCH_NO_PREFIX
	if (p->family == 4)
		m = match4(cfg_idx, p->saddr4);
	else if (p->family == 6)
		m = match6(cfg_idx, p->saddr6.in6_u.u6_addr32[0], p->saddr6.in6_u.u6_addr32[1],
			   p->saddr6.in6_u.u6_addr32[2], p->saddr6.in6_u.u6_addr32[3]);
#endif
	if (m >= 0) {
		*plen = m & 0xff;
		*verdict = (m >> 8) == ACT_ALLOW ? V_PASS : V_DROP;
		return (m >> 8) == ACT_ALLOW ? R_SRC_ALLOW : R_SRC_DENY;
	}
#ifndef BENCH_NO_PORTS
	if (p->has_ports) {
		__u32 idx = p->dport + (p->proto == IPPROTO_UDP ? 65536 : 0);
		struct entry *e = bpf_map_lookup_elem(&ports, &idx);
		if (e && e->action != ACT_NONE && live(e, &now)) {
			if (knobs.count_hits)
				__sync_fetch_and_add(&e->hits, 1);
			*verdict = e->action == ACT_ALLOW ? V_PASS : V_DROP;
			return e->action == ACT_ALLOW ? R_PORT_ALLOW : R_PORT_DENY;
		}
	}
#endif
	if (p->is_nd) {
		*verdict = V_PASS;
		return R_ND;
	}
	if (c->nrules && p->family) {
		m = match_rules(ctx, p, c->rgen);
		if (m == ACT_ALLOW || m == ACT_DENY) {
			*verdict = m == ACT_ALLOW ? V_PASS : V_DROP;
			return m == ACT_ALLOW ? R_RULE_ALLOW : R_RULE_DENY;
		}
	}
	*verdict = c->policy == V_DROP ? V_DROP : V_PASS;
	return p->fragment == 2 ? R_FRAGMENT : R_POLICY;
}

static __always_inline void trace(struct xdp_md *ctx, struct pkt *p, __u32 reason, __u32 verdict,
				  __u8 plen, __u32 len)
{
	struct event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		__u32 lost = R_MAX * 2;
		struct counter *c = bpf_map_lookup_elem(&stats, &lost);
		if (c)
			c->packets++;
		return;
	}
	ev->ts = bpf_ktime_get_ns();
	ev->ifindex = ctx->ingress_ifindex;
	ev->pkt_len = len;
	ev->verdict = verdict;
	ev->reason = reason;
	ev->family = p->family;
	ev->proto = p->proto;
	ev->sport = p->sport;
	ev->dport = p->dport;
	if (p->family == 4) {
		__builtin_memset(ev->src, 0, sizeof(ev->src) * 2);
		__builtin_memcpy(ev->src, &p->saddr4, 4);
		__builtin_memcpy(ev->dst, &p->daddr4, 4);
	} else {
		__builtin_memcpy(ev->src, &p->saddr6, 16);
		__builtin_memcpy(ev->dst, &p->daddr6, 16);
	}
	ev->plen = plen;
	ev->vlans = p->vlans;
	ev->fragment = p->fragment;
	ev->pad = 0;
	ev->ethertype = p->ethertype;
	ev->rule = p->rule_pos;
	ev->rule_id = p->rule_id;
	ev->pad2 = 0;
	bpf_ringbuf_submit(ev, 0);
}

/*
 * Everything after parsing, in a global function: the verifier checks it once
 * instead of once per parser path (VLAN depth x family x extension headers).
 * Returns the XDP action.
 */
__noinline int finish(struct xdp_md *ctx, struct pkt *p, int reason, __u32 cfg_idx)
{
	__u32 verdict = V_DROP, idx;
	__u32 len;
	__u8 plen = 0;

	if (!ctx || !p)
		return XDP_PASS;
	struct config *c = bpf_map_lookup_elem(&cfg, &cfg_idx);
	if (!c)
		return XDP_PASS;
	len = ctx->data_end - ctx->data;
	if (reason < 0 || reason >= R_MAX)
		reason = decide(ctx, cfg_idx, c, p, &plen, &verdict);

#ifndef BENCH_NO_STATS
	idx = (__u32)reason * 2 + verdict;
	struct counter *cnt = bpf_map_lookup_elem(&stats, &idx);
	if (cnt) {
		cnt->packets++;
		cnt->bytes += len;
	}
#endif
	if (knobs.trace_all)
		trace(ctx, p, reason, verdict, plen, len);
	else if (c->trace_every && (c->trace_every == 1 || bpf_get_prandom_u32() % c->trace_every == 0))
		trace(ctx, p, reason, verdict, plen, len);
	return verdict == V_DROP ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int xdp_filter(struct xdp_md *ctx)
{
	struct pkt p = {};
	__u32 zero = 0;

	struct selector *sel = bpf_map_lookup_elem(&cfg_sel, &zero);
	if (!sel)
		return XDP_PASS;
#ifdef BENCH_ONLY_CONFIG
	return XDP_PASS;
#endif
	int reason = parse(ctx, &p);
#ifdef BENCH_ONLY_PARSE
	return reason == R_MAX + p.family ? XDP_DROP : XDP_PASS; /* keeps the parse */
#endif
	return finish(ctx, &p, reason, sel->live & 1);
}

char LICENSE[] SEC("license") = "GPL";
