// SPDX-License-Identifier: GPL-2.0
/*
 * pyxdp datapath: one XDP program that parses a frame once and decides
 *   1. malformed or too deeply nested headers: drop
 *   2. ARP: pass; IPv6 neighbour discovery: pass
 *   3. the ordered rules: the first that matches decides (see match_rules)
 *   4. the policy (pass or drop)
 * Before the rules, replies in connections the host opened pass (and ICMP
 * errors about them): the program `egress` (tc, on the same interfaces)
 * records each flow the host starts in the LRU hashes `flows4`, `flows6`.
 * Every decision is counted per interface and reason; tracing sends sampled
 * events (with the packet's first bytes) to a ring buffer.
 *
 * Rules name prefixes, ports, protocols, interfaces and sets. A set holds
 * IPv4 and IPv6 prefixes of any length, each with an optional expiry and a
 * hit counter (see set_has4/set_has6); a timer (sweep_tick) removes expired
 * elements from kernel memory.
 *
 * What this file shares with the control plane is in pyxdp.h.
 */
/*
 * Every struct this program reads is a wire format or UAPI (ethhdr, iphdr,
 * ipv6hdr, tcphdr, udphdr, vlan_hdr, xdp_md): their layouts cannot change
 * between kernels, so CO-RE relocations on them would be no-ops. They are not
 * free: any relocation makes libbpf parse the kernel's whole BTF at every
 * load (12 ms of a 55 ms load here). The object stays compile-once,
 * run-everywhere by reading only stable layouts.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "../vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "pyxdp.h"

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
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10
#define TC_NEXT (-1) /* TC_ACT_UNSPEC: the next tc filter (if any) decides; the packet goes on */
#define MAX_L3_OFF (14 + 4 * MAX_VLAN)
#define DEFAULT_RULES (DEFAULT_RULE_WORDS * 64)
#define CLASSES(r) (CLASS_PER_RULE * (r) + CLASS_EXTRA)
#define CLOCK_MONOTONIC 1

/*
 * Knobs fixed before load (const volatile: the verifier prunes what they turn
 * off). `pyxdp-load replay` loads a second instance with trace_all = 1 and
 * count_hits = 0: an event for every test packet, and live hit counters left
 * alone. The attached filter keeps the defaults.
 */
const volatile struct knobs knobs = { .trace_all = 0, .count_hits = 1, .rule_words = DEFAULT_RULE_WORDS };

/* Never called: keeps the shared structs and enums in BTF for the Python
 * layout check (tests/test_build.py). */
struct shared_types {
	struct event ev;
	struct meta m;
	struct journal j;
	struct set_name sn;
	struct len_counts lc;
	struct trie_guard tg;
	struct sweep_state ss;
	struct sweep_ctl sc;
	enum action a;
	enum reason r;
	enum verdict v;
	enum set_state s;
	enum journal_op o;
	enum pyxdp_limits l;
	enum rule_field f;
	enum flow_state fs;
	enum iface_flags iff;
	struct flow_key fk;
	struct flow_key4 fk4;
	struct flow fl;
	struct ifslot is;
};

_Static_assert(STATS_STRIDE == R_MAX * 2, "a stats slot holds reason * 2 + verdict");

__noinline int btf_anchor(struct shared_types *t)
{
	return t ? 0 : 1;
}

#define PINNED __uint(pinning, LIBBPF_PIN_BY_NAME)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct meta);
	PINNED;
} meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct config);
	PINNED;
} cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct selector);
	PINNED;
} cfg_sel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct journal);
	PINNED;
} journal SEC(".maps");

/* index: slot * STATS_STRIDE + reason * 2 + verdict (slot: the interface's,
 * see ifslots); the last entry counts lost trace events */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IF_SLOTS * STATS_STRIDE + 1);
	__type(key, __u32);
	__type(value, struct counter);
	PINNED;
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IF_HASH);
	__type(key, __u32);
	__type(value, struct ifslot);
	PINNED;
} ifslots SEC(".maps");

/* Connections the host opened (written by `egress`, read by packets), per
 * family; the least recently used goes when one is full. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DEFAULT_FLOWS);
	__type(key, struct flow_key4);
	__type(value, struct flow);
	PINNED;
} flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DEFAULT_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow);
	PINNED;
} flows6 SEC(".maps");

/* Flows the egress program started, per family: [0] IPv4, [1] IPv6 (a
 * live count would need a walk of the tables; this counts new ones) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
	PINNED;
} flows_made SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	PINNED;
} events SEC(".maps");

/*
 * The control plane's RCU grace period: writing rcu_token's fd into rcu_sync
 * (a map-in-map) makes the kernel return only once no BPF program that may
 * have read the old data still runs (synchronize_rcu): a packet's run, a
 * test run, a sweeper walk. Never read here.
 */
struct rcu_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	PINNED;
} rcu_token SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	PINNED;
	__array(values, struct rcu_inner); /* last: a flexible array */
} rcu_sync SEC(".maps");

/* Control-plane bookkeeping of attached interfaces; never read here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct iface_key);
	__type(value, struct iface_val);
	PINNED;
} ifaces SEC(".maps");

/*
 * Ordered rules, classified by bit vectors (the scheme of bpf-iptables).
 * Rule i is bit i of a vector of rule_words u64 words. Each field of a packet
 * (protocol, source address, source sets, destination address, destination
 * sets, source port, destination port, interface) maps to a class; a class
 * has the vector of the rules whose field accepts that value. AND the
 * vectors of the fields some rule constrains; the lowest set bit is the first
 * matching rule. The cost grows with rules / 64, not with rules.
 *
 * Everything a packet reads for rules is kept twice, one copy per
 * generation: the control plane writes the idle generation whole, then
 * switches cfg.rgen. A packet reads rgen once, so it sees one rule set or the
 * other, never a mix. Sets are not doubled: rules name them by id, and a set
 * replaced by `apply` gets a new id.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct ruleset);
	PINNED;
} rsets SEC(".maps");

#define TRIE(_name, _key, _value, _cap)                         \
	struct {                                                \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);            \
		__uint(max_entries, _cap);                      \
		__uint(map_flags, BPF_F_NO_PREALLOC);           \
		__type(key, _key);                              \
		__type(value, _value);                          \
		PINNED;                                         \
	} _name SEC(".maps")

/* the prefixes rules name; capacities are sized by the loader from the rule capacity */
TRIE(rlit4, struct rkey4, __u32, 4 * DEFAULT_RULES);
TRIE(rlit6, struct rkey6, __u32, 4 * DEFAULT_RULES);

/* class -> vector of rule_words words, then one more word: the index of the
 * vector's first non-zero word (rule_words when it is all zero), so that the
 * walk starts where the first match can be. Generation g owns classes
 * [g * n / 2, (g + 1) * n / 2). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * CLASSES(DEFAULT_RULES));
	__uint(key_size, 4);
	__uint(value_size, DEFAULT_RULE_WORDS * 8 + 8);
	PINNED;
} rvec SEC(".maps");

/* index: gen << GEN_SHIFT | dir << PORT_DIR_SHIFT | port -> class */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * 65536);
	__type(key, __u32);
	__type(value, __u32);
	PINNED;
} rports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, struct ifkey);
	__type(value, __u32);
	PINNED;
} riface SEC(".maps");

/* index: gen * rules + position -> the rule there */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * DEFAULT_RULES);
	__type(key, __u32);
	__type(value, struct rref);
	PINNED;
} rorder SEC(".maps");

/* index: rule id */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * DEFAULT_RULES);
	__type(key, __u32);
	__type(value, struct counter);
	PINNED;
} rhits SEC(".maps");

/* Control plane only: each rule's text by id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * DEFAULT_RULES);
	__uint(key_size, 4);
	__uint(value_size, RULE_TEXT);
	PINNED;
} rdefs SEC(".maps");

/*
 * Sets. Every element lives in the hash of its family (elem4/elem6), keyed
 * by (32 + prefix length, set id, masked address): that copy holds its
 * expiry, hit counter and epochs. Per set and family, the few most populated
 * lengths (at most HASHED_MAX, chosen by the control plane) are found by
 * probing that hash once per length; the elements of all other lengths also
 * have a copy in an LPM trie (trie4/trie6, value: 32 + prefix length), found
 * with one trie lookup. Capacity is set at load; elements are allocated as
 * they are added.
 */
#define ELEMS(_name, _key)                                      \
	struct {                                                \
		__uint(type, BPF_MAP_TYPE_HASH);                \
		__uint(max_entries, 1048576);                   \
		__uint(map_flags, BPF_F_NO_PREALLOC);           \
		__type(key, _key);                              \
		__type(value, struct elem);                     \
		PINNED;                                         \
	} _name SEC(".maps")

ELEMS(elem4, struct rkey4);
ELEMS(elem6, struct rkey6);
TRIE(trie4, struct rkey4, __u32, 1048576);
TRIE(trie6, struct rkey6, __u32, 1048576);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SETS);
	__type(key, __u32);
	__type(value, struct set_info);
	PINNED;
} sets SEC(".maps");

/* Per set id and family (index sid * 2 + (family == 6)): bit b is set when
 * the trie may hold an element of the set covering addresses whose first 16
 * bits are b. A clear bit spares a non-member the trie lookup. The control
 * plane sets bits before it writes the trie copies they cover, and clears
 * them only when it rebuilds the map from the elements. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * MAX_SETS);
	__type(key, __u32);
	__type(value, struct trie_guard);
	PINNED;
} tguard SEC(".maps");

/* Control plane only: set name -> ids. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SETS);
	__uint(key_size, SET_NAME);
	__type(value, struct set_name);
	PINNED;
} set_names SEC(".maps");

/* per set id: elements per length as the control plane counted them ... */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SETS);
	__type(key, __u32);
	__type(value, struct len_counts);
	PINNED;
} counts SEC(".maps");

/* ... and those the sweeper removed since */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SETS);
	__type(key, __u32);
	__type(value, struct len_counts);
	PINNED;
} swept SEC(".maps");

struct sweeper_val {
	struct bpf_timer timer;
	struct sweep_state st;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sweeper_val);
	PINNED;
} sweeper SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sweep_ctl);
	PINNED;
} sweep_ctl SEC(".maps");

struct pkt {
	__u16 ethertype;
	__u8 vlans;
	__u8 family;
	__u8 proto;
	__u8 fragment;
	__u8 has_ports;
	__u8 is_nd;
	__u8 hop255;     /* IPv6 hop limit is 255: the packet cannot come from off-link */
	__u8 tcp_flags;
	__u8 has_id;     /* an ICMP echo request or reply: icmp_id is its identifier */
	__u8 pad;
	__u16 l4_off;    /* where the L4 header starts */
	__u16 icmp_id;
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
	p->l4_off = off;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *t = cur;
		if ((void *)(t + 1) > end)
			return R_MALFORMED;
		p->sport = bpf_ntohs(t->source);
		p->dport = bpf_ntohs(t->dest);
		p->tcp_flags = ((__u8 *)t)[13];
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
		if ((void *)(ic + 8) <= end && (ic[0] == (p->proto == IPPROTO_ICMP ? 8 : 128) ||
						ic[0] == (p->proto == IPPROTO_ICMP ? 0 : 129))) {
			p->has_id = 1;
			p->icmp_id = ((__u16)ic[4] << 8) | ic[5];
		}
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

/* The IPv4 header at off, then its L4 header. */
static __always_inline int parse_ip4(void *data, void *end, struct pkt *p, __u64 off)
{
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

/* The fixed IPv6 header at off; p->proto is its next header. */
static __always_inline int parse_ip6(void *data, void *end, struct pkt *p, __u64 off)
{
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
	return -1;
}

/* IPv4 or IPv6 header at off (after Ethernet and VLAN tags). */
static __always_inline int parse_l3(struct xdp_md *ctx, void *data, void *end, struct pkt *p, __u64 off)
{
	if (off > MAX_L3_OFF)
		return R_MALFORMED;
	if (p->ethertype == ETH_P_IP)
		return parse_ip4(data, end, p, off);
	if (p->ethertype == ETH_P_IPV6) {
		int r = parse_ip6(data, end, p, off);
		if (r >= 0)
			return r;
		if (is_exthdr(p->proto))
			return parse_ipv6_ext(ctx, p, off + sizeof(struct ipv6hdr), p->proto);
		return parse_l4(data, end, p, off + sizeof(struct ipv6hdr));
	}
	return -1;
}

/* Ethernet and VLAN tags: sets p->ethertype and *offp (the L3 header). */
static __always_inline int parse_eth(void *data, void *end, struct pkt *p, __u64 *offp)
{
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
	*offp = off;
	return -1;
}

static __always_inline int parse(struct xdp_md *ctx, struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 off = 0;
	int r = parse_eth(data, end, p, &off);

	if (r >= 0)
		return r;
	return parse_l3(ctx, data, end, p, off);
}

/* ---- sets ------------------------------------------------------------------ */

/* Whether an element counts now: committed (born <= epoch), not removed by a
 * committed change (until), not expired. *now is read when first needed. */
static __always_inline int visible(struct elem *e, __u32 epoch, __u64 *now)
{
	if (e->born > epoch || (e->until && e->until <= epoch))
		return 0;
	if (!e->expires)
		return 1;
	if (!*now)
		*now = bpf_ktime_get_coarse_ns();
	return *now < e->expires;
}

static __always_inline int member(struct elem *e)
{
	if (knobs.count_hits)
		__sync_fetch_and_add(&e->hits, 1);
	return 1;
}

/* The network-order mask of a 32-bit word that keeps its first bits bits. */
static __always_inline __u32 mask_word(int bits)
{
	if (bits >= 32)
		return 0xffffffff;
	if (bits <= 0)
		return 0;
	return bpf_htonl(0xffffffffu << (32 - bits));
}

static __always_inline void mask6(struct rkey6 *k, const __u32 *a, __u32 n)
{
	__u32 *kw = (__u32 *)k->addr;

	kw[0] = a[0] & mask_word(n);
	kw[1] = a[1] & mask_word(n - 32);
	kw[2] = a[2] & mask_word(n - 64);
	kw[3] = a[3] & mask_word(n - 96);
}

/*
 * One step of a set's trie walk: the longest trie element of set sid of
 * key length <= plen (32 + prefix length) holding the packet's source (dir 0)
 * or destination (dir 1) address. Returns 1 when it is visible (its hit
 * counted), 0 when there is none, or -(its key length) when it is not
 * visible (expired, or not committed): the walk goes on below it. A global
 * function: verified once, not once per step of the walk.
 */
__noinline int trie_step(struct pkt *p, __u32 dir, __u32 sid, __u32 plen)
{
	struct set_info *si;
	struct elem *e;
	__u32 *v, l;

	if (!p)
		return 0;
	si = bpf_map_lookup_elem(&sets, &sid);
	if (!si)
		return 0;
	if (p->family == 4) {
		__u32 addr = dir ? p->daddr4 : p->saddr4;
		struct rkey4 k = { .plen = plen, .tag = sid, .addr = addr };

		v = bpf_map_lookup_elem(&trie4, &k);
		if (!v)
			return 0;
		l = *v;
		if (l < 32 || l > 64)
			return 0;
		k.plen = l;
		k.addr = addr & mask_word(l - 32);
		e = bpf_map_lookup_elem(&elem4, &k);
	} else {
		const __u32 *a = dir ? p->daddr6.in6_u.u6_addr32 : p->saddr6.in6_u.u6_addr32;
		struct rkey6 k = { .plen = plen, .tag = sid };

		__builtin_memcpy(k.addr, a, 16);
		v = bpf_map_lookup_elem(&trie6, &k);
		if (!v)
			return 0;
		l = *v;
		if (l < 32 || l > 160)
			return 0;
		k.plen = l;
		mask6(&k, a, l - 32);
		e = bpf_map_lookup_elem(&elem6, &k);
	}
	__u64 now = 0;

	if (e && visible(e, si->epoch, &now))
		return member(e);
	return -(int)l;
}

/* Whether the trie guard of set-and-family index gi has the bit of the
 * address's first 16 bits hi (see tguard). */
static __always_inline int guarded(__u32 gi, __u32 hi)
{
	struct trie_guard *g = bpf_map_lookup_elem(&tguard, &gi);

	return !g || (g->w[(hi >> 6) & (GUARD_WORDS - 1)] >> (hi & 63) & 1);
}

/* The trie walk of set sid from key length plen down (one step per
 * invisible element on the way, at most one per prefix length). */
static __always_inline int trie_walk(struct pkt *p, __u32 dir, __u32 sid, __u32 plen)
{
	for (int i = 0; i < 129; i++) {
		int r = trie_step(p, dir, sid, plen);
		if (r >= 0)
			return r;
		if (-r <= 32)
			return 0;
		plen = -r - 1;
	}
	return 0;
}

/*
 * Whether set sid holds addr: some visible element of the set is a prefix of
 * it. The hashed lengths are probed (one hash lookup each);
 * then, when the set has elements of other lengths, one trie lookup finds
 * the longest of those, and an invisible one (expired, or not committed)
 * sends the lookup on to shorter prefixes. The element found counts a hit.
 */
static __always_inline int set_has4(struct set_info *si, struct pkt *p, __u32 dir, __u32 sid, __u32 addr)
{
	struct rkey4 k = { .tag = sid };
	__u32 epoch = si->epoch;
	__u64 now = 0;
	struct elem *e;

	for (int i = 0; i < HASHED_MAX; i++) {
		__u32 n = si->lens4[i];
		if (!n || n > 33)
			continue;
		n -= 1;
		k.plen = 32 + n;
		k.addr = addr & mask_word(n);
		e = bpf_map_lookup_elem(&elem4, &k);
		if (e && visible(e, epoch, &now))
			return member(e);
	}
	if (!si->trie4)
		return 0;
	if (!guarded(sid * 2, bpf_ntohl(addr) >> 16))
		return 0;
	return trie_walk(p, dir, sid, 64);
}

static __always_inline int set_has6(struct set_info *si, struct pkt *p, __u32 dir, __u32 sid, const __u32 *a)
{
	struct rkey6 k = { .tag = sid };
	__u32 epoch = si->epoch;
	__u64 now = 0;
	struct elem *e;

	for (int i = 0; i < HASHED_MAX; i++) {
		__u32 n = si->lens6[i];
		if (!n || n > 129)
			continue;
		n -= 1;
		k.plen = 32 + n;
		mask6(&k, a, n);
		e = bpf_map_lookup_elem(&elem6, &k);
		if (e && visible(e, epoch, &now))
			return member(e);
	}
	if (!si->trie6)
		return 0;
	if (!guarded(sid * 2 + 1, bpf_ntohl(a[0]) >> 16))
		return 0;
	return trie_walk(p, dir, sid, 160);
}

/* Whether set sid holds the packet's source (dir 0) or destination (dir 1).
 * A global function: verified once, whatever calls it. */
__noinline int set_has(struct pkt *p, __u32 dir, __u32 sid)
{
	if (!p)
		return 0;
	struct set_info *si = bpf_map_lookup_elem(&sets, &sid);
	if (!si)
		return 0;
	if (p->family == 4)
		return set_has4(si, p, dir, sid, dir ? p->daddr4 : p->saddr4);
	return set_has6(si, p, dir, sid, dir ? p->daddr6.in6_u.u6_addr32 : p->saddr6.in6_u.u6_addr32);
}

/* ---- rules ----------------------------------------------------------------- */

/* Index of the lowest set bit of a non-zero word. */
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

/* The class of the rule prefixes holding one address of the packet (dir 0
 * source, 1 destination), looked up only when some rule names a prefix there. */
static __always_inline __u32 lit_class(struct ruleset *rs, __u32 gen, __u32 dir, struct pkt *p)
{
	__u32 *v = NULL;

	if (p->family == 4) {
		if (rs->fields & (dir ? RS_LIT4_DST : RS_LIT4_SRC)) {
			struct rkey4 k = { .plen = 64, .tag = gen * 2 + dir, .addr = dir ? p->daddr4 : p->saddr4 };
			v = bpf_map_lookup_elem(&rlit4, &k);
		}
		return v ? *v : rs->lit_dflt[dir * 2];
	}
	if (rs->fields & (dir ? RS_LIT6_DST : RS_LIT6_SRC)) {
		struct rkey6 k = { .plen = 160, .tag = gen * 2 + dir };
		__builtin_memcpy(k.addr, dir ? &p->daddr6 : &p->saddr6, 16);
		v = bpf_map_lookup_elem(&rlit6, &k);
	}
	return v ? *v : rs->lit_dflt[dir * 2 + 1];
}

/* The class of which referenced sets hold one address: setb + hit mask. */
static __always_inline __u32 set_class(struct ruleset *rs, __u32 dir, struct pkt *p)
{
	__u32 mask = 0;

	for (__u32 i = 0; i < RULE_SETS; i++) {
		if (i >= rs->n_sets[dir & 1])
			break;
		if (set_has(p, dir, rs->sets[dir & 1][i]))
			mask |= 1 << i;
	}
	return rs->setb[dir & 1] + mask;
}

static __always_inline __u32 port_class(struct ruleset *rs, __u32 gen, __u32 dir, struct pkt *p)
{
	if (!p->has_ports)
		return rs->noport[dir];
	__u32 k = gen << GEN_SHIFT | dir << PORT_DIR_SHIFT | (dir ? p->dport : p->sport);
	__u32 *v = bpf_map_lookup_elem(&rports, &k);
	return v ? *v : rs->noport[dir];
}

/*
 * The first rule of generation gen that the packet (IPv4 or IPv6) matches.
 * Returns its action (and notes it in p), or -1. A field no rule constrains
 * is not looked up: its class is the all-ones vector. A global function: the
 * walk is verified once, and a packet pays the call only when rules exist.
 */
__noinline int match_rules(struct xdp_md *ctx, struct pkt *p, __u32 gen)
{
	__u32 c_proto, c_src, c_sset, c_dst, c_dset, c_sport, c_dport, c_if, pc, all, f, *v;

	if (!ctx || !p)
		return -1;
	gen &= 1;
	struct ruleset *rs = bpf_map_lookup_elem(&rsets, &gen);
	if (!rs)
		return -1;
	f = rs->fields;
	all = rs->all_cls;
	pc = p->proto == IPPROTO_TCP ? 0 : p->proto == IPPROTO_UDP ? 1 : p->proto == IPPROTO_ICMP ? 2 :
	     p->proto == IPPROTO_ICMPV6 ? 3 : 4;
	c_proto = f & F_PROTO ? rs->proto_cls[pc & 7] : all;
	c_src = lit_class(rs, gen, 0, p);
	c_dst = lit_class(rs, gen, 1, p);
	c_sset = f & F_SSET ? set_class(rs, 0, p) : all;
	c_dset = f & F_DSET ? set_class(rs, 1, p) : all;
	c_sport = f & F_SPORT ? port_class(rs, gen, 0, p) : all;
	c_dport = f & F_DPORT ? port_class(rs, gen, 1, p) : all;
	c_if = all;
	if (f & F_IFACE) {
		struct ifkey ik = { .gen = gen, .ifindex = ctx->ingress_ifindex };
		v = bpf_map_lookup_elem(&riface, &ik);
		c_if = v ? *v : rs->iface_dflt;
	}

	__u64 *a = bpf_map_lookup_elem(&rvec, &c_proto);
	__u64 *b = bpf_map_lookup_elem(&rvec, &c_src);
	__u64 *c = bpf_map_lookup_elem(&rvec, &c_sset);
	__u64 *d = bpf_map_lookup_elem(&rvec, &c_dst);
	__u64 *e = bpf_map_lookup_elem(&rvec, &c_dset);
	__u64 *g = bpf_map_lookup_elem(&rvec, &c_sport);
	__u64 *h = bpf_map_lookup_elem(&rvec, &c_dport);
	__u64 *j = bpf_map_lookup_elem(&rvec, &c_if);
	if (!a || !b || !c || !d || !e || !g || !h || !j)
		return -1;
	__u32 words = rs->n_words, nw = knobs.rule_words;
	if (nw > MAX_RULE_WORDS)
		return -1;
	/* no rule can match before the first non-zero word of any of the vectors */
	__u64 start = a[nw];
	start = b[nw] > start ? b[nw] : start;
	start = c[nw] > start ? c[nw] : start;
	start = d[nw] > start ? d[nw] : start;
	start = e[nw] > start ? e[nw] : start;
	start = g[nw] > start ? g[nw] : start;
	start = h[nw] > start ? h[nw] : start;
	start = j[nw] > start ? j[nw] : start;
	if (start > nw)
		start = nw;
	for (__u32 n = 0; n < MAX_RULE_WORDS; n++) {
		__u64 i = start + n;
		if (i >= words || i >= nw)
			break;
		barrier_var(i); /* index with the register just checked */
		__u64 w = a[i] & b[i] & c[i] & d[i] & e[i] & g[i] & h[i] & j[i];
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

/* ---- connection state ------------------------------------------------------ */

static __always_inline __u64 secs(__u32 s)
{
	return (__u64)s * 1000000000ULL;
}

static __always_inline int echo_request(__u8 proto, __u8 type)
{
	return type == (proto == IPPROTO_ICMP ? 8 : 128);
}

/* An ICMP or ICMPv6 error: destination unreachable (with fragmentation
 * needed), time exceeded, parameter problem; packet too big. */
static __always_inline int icmp_error(struct pkt *p)
{
	__u8 t = p->sport;
	if (p->proto == IPPROTO_ICMP)
		return t == 3 || t == 11 || t == 12;
	return t >= 1 && t <= 4;
}

/* The addresses of a flow key: remote first. */
static __always_inline void key_addrs(struct flow_key *k, struct pkt *p, int inbound)
{
	k->family = p->family;
	k->proto = p->proto;
	if (p->family == 4) {
		__builtin_memcpy(k->raddr, inbound ? &p->saddr4 : &p->daddr4, 4);
		__builtin_memcpy(k->laddr, inbound ? &p->daddr4 : &p->saddr4, 4);
	} else {
		__builtin_memcpy(k->raddr, inbound ? &p->saddr6 : &p->daddr6, 16);
		__builtin_memcpy(k->laddr, inbound ? &p->daddr6 : &p->saddr6, 16);
	}
}

static __always_inline void key4(struct flow_key4 *k4, struct flow_key *k)
{
	k4->family = 4;
	k4->proto = k->proto;
	k4->rport = k->rport;
	k4->lport = k->lport;
	k4->pad = 0;
	__builtin_memcpy(&k4->raddr, k->raddr, 4);
	__builtin_memcpy(&k4->laddr, k->laddr, 4);
}

static __always_inline struct flow *flow_get(struct flow_key *k)
{
	if (k->family == 4) {
		struct flow_key4 k4;
		key4(&k4, k);
		return bpf_map_lookup_elem(&flows4, &k4);
	}
	return bpf_map_lookup_elem(&flows6, k);
}

static __always_inline void flow_put(struct flow_key *k, struct flow *v)
{
	if (k->family == 4) {
		struct flow_key4 k4;
		key4(&k4, k);
		bpf_map_update_elem(&flows4, &k4, v, BPF_ANY);
	} else {
		bpf_map_update_elem(&flows6, k, v, BPF_ANY);
	}
}

/* The flow an arriving packet belongs to, if any (the key built for its
 * family directly: the hot path of every TCP and UDP packet). */
static __always_inline struct flow *arriving_flow(struct pkt *p, __u16 rport, __u16 lport)
{
	if (p->family == 4) {
		struct flow_key4 k = { .family = 4, .proto = p->proto, .rport = rport, .lport = lport,
				       .raddr = p->saddr4, .laddr = p->daddr4 };
		return bpf_map_lookup_elem(&flows4, &k);
	}
	struct flow_key k = { .rport = rport, .lport = lport };
	key_addrs(&k, p, 1);
	return bpf_map_lookup_elem(&flows6, &k);
}

static __always_inline struct flow *live_flow(struct flow_key *k, __u64 now)
{
	struct flow *f = flow_get(k);
	return f && now < f->expires ? f : 0;
}

/*
 * An ICMP error whose quoted header is a packet the host sent in a flow it
 * opened: the quoted source must be the error's destination, and the quoted
 * ports (or echo identifier) must name the flow. Returns R_RELATED or -1.
 * A global function: ICMP errors are rare, and its key and header pointers
 * kept in finish's frame would take the call chain past the 512 bytes of
 * stack 6.1's verifier allows (each frame rounded up to 32 bytes there).
 */
__noinline int ct_related(struct xdp_md *ctx, struct pkt *p)
{
	if (!ctx || !p)
		return -1;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct flow_key k = {};
	__u64 off = p->l4_off;
	__u8 *l4;

	if (off > MAX_L4_OFF)
		return -1;
	off += 8; /* the ICMP header */
	if (p->family == 4) {
		struct iphdr *ip = data + off;
		if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5 || ip->saddr != p->daddr4 ||
		    (ip->frag_off & bpf_htons(0x1fff)))
			return -1;
		k.family = 4;
		k.proto = ip->protocol;
		__builtin_memcpy(k.raddr, &ip->daddr, 4);
		__builtin_memcpy(k.laddr, &ip->saddr, 4);
		off += ip->ihl * 4;
	} else {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > end || ip6->version != 6)
			return -1;
		const __u32 *q = (const __u32 *)&ip6->saddr, *d = (const __u32 *)&p->daddr6;
		if (q[0] != d[0] || q[1] != d[1] || q[2] != d[2] || q[3] != d[3])
			return -1;
		k.family = 6;
		k.proto = ip6->nexthdr;
		__builtin_memcpy(k.raddr, &ip6->daddr, 16);
		__builtin_memcpy(k.laddr, &ip6->saddr, 16);
		off += sizeof(*ip6);
	}
	l4 = data + off;
	if ((void *)(l4 + 8) > end) /* RFC 792 and 4443: at least 8 bytes of the datagram are quoted */
		return -1;
	__u16 lport, rport = 0;
	if (k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP) {
		lport = ((__u16)l4[0] << 8) | l4[1];
		rport = ((__u16)l4[2] << 8) | l4[3];
	} else if ((k.proto == IPPROTO_ICMP && k.family == 4) || (k.proto == IPPROTO_ICMPV6 && k.family == 6)) {
		if (!echo_request(k.proto, l4[0]))
			return -1;
		lport = ((__u16)l4[4] << 8) | l4[5];
	} else {
		return -1;
	}
	k.lport = lport;
	k.rport = rport;
	return live_flow(&k, bpf_ktime_get_coarse_ns()) ? R_RELATED : -1;
}

/*
 * Whether an inbound packet belongs to a flow the host opened: R_ESTABLISHED,
 * R_RELATED (an ICMP error about one) or -1. A TCP SYN without ACK never
 * does (a new connection from outside is for the rules), nor anything but a
 * SYN-ACK or RST before the host has acknowledged the answer. Inbound packets
 * never change a TCP flow (a forged RST or FIN cannot end it); the first
 * answer to a UDP flow moves it to its longer "stream" timeout.
 */
static __always_inline int ct_inbound(struct xdp_md *ctx, struct config *c, struct pkt *p)
{
	__u16 rport = 0, lport;
	struct flow *f;
	__u64 now;

	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		if (!p->has_ports)
			return -1;
		if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
			return -1;
		rport = p->sport;
		lport = p->dport;
	} else if (p->proto == (p->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6)) {
		if (icmp_error(p))
			return ct_related(ctx, p);
		if (!p->has_id || echo_request(p->proto, p->sport))
			return -1;
		lport = p->icmp_id;
	} else {
		return -1;
	}
	f = arriving_flow(p, rport, lport);
	if (!f)
		return -1; /* the common case for what is not a reply: no clock read */
	now = bpf_ktime_get_coarse_ns();
	if (now >= f->expires)
		return -1;
	if (p->proto == IPPROTO_TCP) {
		if (f->state == FS_SYN_SENT && !(p->tcp_flags & (TCP_ACK | TCP_RST)))
			return -1;
	} else if (f->state == FS_UDP) {
		f->state = FS_UDP_STREAM;
		f->expires = now + secs(c->timeout[FS_UDP_STREAM]);
	}
	return R_ESTABLISHED;
}

/*
 * Records what the host sends: a TCP SYN (without ACK), a UDP datagram or an
 * ICMP echo request starts a flow; later TCP segments move it on (the ACK of
 * the answer: established; a FIN: fin; a RST: close) but never start one or
 * bring back one that expired or closed. A SYN-ACK is the host answering a
 * connection someone else opened: not tracked. The flow's expiry is
 * rewritten only when its state changes or it is older than FLOW_STALE_MS.
 */
static __always_inline void ct_outbound(struct config *c, struct pkt *p)
{
	struct flow_key k = {};
	__u32 st;
	int starts = 0;

	if (p->proto == IPPROTO_TCP) {
		__u8 fl = p->tcp_flags;
		if ((fl & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
			st = FS_SYN_SENT;
			starts = 1;
		} else if (fl & TCP_SYN) {
			return;
		} else if (fl & TCP_RST) {
			st = FS_CLOSE;
		} else if (fl & TCP_FIN) {
			st = FS_FIN;
		} else {
			st = FS_ESTABLISHED;
		}
		k.rport = p->dport;
		k.lport = p->sport;
	} else if (p->proto == IPPROTO_UDP) {
		st = FS_UDP;
		starts = 1;
		k.rport = p->dport;
		k.lport = p->sport;
	} else if (p->proto == (p->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6) && p->has_id &&
		   echo_request(p->proto, p->sport)) {
		st = FS_ICMP;
		starts = 1;
		k.lport = p->icmp_id;
	} else {
		return;
	}
	key_addrs(&k, p, 0);
	__u64 now = bpf_ktime_get_coarse_ns();
	struct flow *f = flow_get(&k);
	if (f && now < f->expires) {
		__u32 cur = f->state;
		if (p->proto == IPPROTO_TCP && st != FS_SYN_SENT) {
			if (cur == FS_CLOSE)
				return; /* closed stays closed */
			if (cur == FS_FIN && st == FS_ESTABLISHED)
				st = FS_FIN;
		} else if (cur == FS_UDP_STREAM && st == FS_UDP) {
			st = FS_UDP_STREAM;
		}
	} else if (!starts) {
		return;
	} else {
		f = 0;
	}
	if (st >= FS_MAX)
		return;
	__u64 expires = now + secs(c->timeout[st]);
	if (!f) {
		struct flow n = { .expires = expires, .state = st };
		__u32 fam = k.family == 6;
		__u64 *made = bpf_map_lookup_elem(&flows_made, &fam);
		flow_put(&k, &n);
		if (made)
			*made += 1;
		return;
	}
	if (f->state == st && f->expires + FLOW_STALE_MS * 1000000ULL >= expires)
		return;
	f->state = st;
	f->expires = expires;
}

/* ---- the decision ---------------------------------------------------------- */

static __always_inline int decide(struct xdp_md *ctx, struct config *c, struct pkt *p, __u32 *verdict)
{
	if (p->ethertype == ETH_P_ARP) {
		*verdict = V_PASS;
		return R_ARP;
	}
	if (p->is_nd) {
		*verdict = V_PASS;
		return R_ND;
	}
	if (c->established && p->family && p->fragment != 2) {
		int r = ct_inbound(ctx, c, p);
		if (r >= 0) {
			*verdict = V_PASS;
			return r;
		}
	}
	if (c->nrules && p->family) {
		int m = match_rules(ctx, p, c->rgen);
		if (m == ACT_ALLOW || m == ACT_DENY) {
			*verdict = m == ACT_ALLOW ? V_PASS : V_DROP;
			return m == ACT_ALLOW ? R_RULE_ALLOW : R_RULE_DENY;
		}
	}
	*verdict = c->policy == V_DROP ? V_DROP : V_PASS;
	return p->fragment == 2 ? R_FRAGMENT : R_POLICY;
}

static __always_inline void trace(struct xdp_md *ctx, struct pkt *p, __u32 reason, __u32 verdict, __u32 len)
{
	struct event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		__u32 lost = IF_SLOTS * STATS_STRIDE;
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
	ev->vlans = p->vlans;
	ev->fragment = p->fragment;
	ev->ethertype = p->ethertype;
	ev->rule = p->rule_pos;
	ev->pad = 0;
	ev->rule_id = p->rule_id;
	ev->pad2 = 0;
	__u64 m = len < HEAD_LEN ? len : HEAD_LEN;
	ev->cap_len = 0;
	if (m) {
		/* 1..HEAD_LEN by arithmetic the verifier follows on every kernel (clang turns
		 * range checks into (m - 1) < HEAD_LEN, whose bound older verifiers lose) */
		asm volatile("" : "+r"(m));
		__u64 n = ((m - 1) & (HEAD_LEN - 1)) + 1;
		if (!bpf_xdp_load_bytes(ctx, 0, ev->head, n))
			ev->cap_len = n;
	}
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

	if (!ctx || !p)
		return XDP_PASS;
	struct config *c = bpf_map_lookup_elem(&cfg, &cfg_idx);
	if (!c)
		return XDP_PASS;
	len = ctx->data_end - ctx->data;
	if (reason < 0 || reason >= R_MAX)
		reason = decide(ctx, c, p, &verdict);

	__u32 ifi = ctx->ingress_ifindex, h = ifi % IF_HASH, slot = 0;
	struct ifslot *is = bpf_map_lookup_elem(&ifslots, &h);
	if (is && is->ifindex == ifi && is->slot < IF_SLOTS)
		slot = is->slot;
	idx = slot * STATS_STRIDE + (__u32)reason * 2 + verdict;
	struct counter *cnt = bpf_map_lookup_elem(&stats, &idx);
	if (cnt) {
		cnt->packets++;
		cnt->bytes += len;
	}
	if (knobs.trace_all)
		trace(ctx, p, reason, verdict, len);
	else if (c->trace_every && (c->trace_every == 1 || bpf_get_prandom_u32() % c->trace_every == 0))
		trace(ctx, p, reason, verdict, len);
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
	int reason = parse(ctx, &p);
	return finish(ctx, &p, reason, sel->live & 1);
}

/* ---- the expiry sweeper ---------------------------------------------------- */

/*
 * A BPF timer wakes every SWEEP_TICK_MS. When an element is due (the earliest
 * expiry its last walk saw, or one the control plane announced in sweep_ctl),
 * it walks both element hashes and removes what no packet can see any more:
 * expired elements and elements a committed change removed. Elements still
 * being added (born > epoch) are left alone. What it removes it counts in
 * `swept`, so that the control plane's counts stay right without it. A
 * writer refreshing elements that may be expiring sets sweep_ctl.hold and
 * waits an RCU grace period, which outlasts any walk under way.
 */
struct sweep_walk {
	__u64 now;
	__u64 next;
	__u64 removed;
};

static __always_inline long sweep_one(void *elems, void *trie, void *key, struct elem *e, __u32 sid, __u32 slot,
				      struct sweep_walk *w)
{
	struct set_info *si = bpf_map_lookup_elem(&sets, &sid);

	if (!si || e->born > si->epoch)
		return 0;
	if (!(e->until && e->until <= si->epoch) && !(e->expires && e->expires <= w->now)) {
		if (e->expires && e->expires < w->next)
			w->next = e->expires;
		return 0;
	}
	bpf_map_delete_elem(trie, key);
	if (bpf_map_delete_elem(elems, key) == 0) {
		struct len_counts *lc = bpf_map_lookup_elem(&swept, &sid);
		__u64 i = slot;

		barrier_var(i);
		if (lc && i < LEN_SLOTS)
			__sync_fetch_and_add(&lc->n[i], 1);
		w->removed++;
	}
	return 0;
}

static long sweep4(struct bpf_map *map, struct rkey4 *key, struct elem *e, struct sweep_walk *w)
{
	return sweep_one(&elem4, &trie4, key, e, key->tag, key->plen - 32, w);
}

static long sweep6(struct bpf_map *map, struct rkey6 *key, struct elem *e, struct sweep_walk *w)
{
	return sweep_one(&elem6, &trie6, key, e, key->tag, 33 + key->plen - 32, w);
}

static int sweep_tick(void *map, __u32 *key, struct sweeper_val *sv)
{
	__u32 zero = 0;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct sweep_ctl *ctl = bpf_map_lookup_elem(&sweep_ctl, &zero);
	__u64 due = sv->st.next_due;

	if (ctl && ctl->seq != sv->st.seen_seq && ctl->hint < due)
		due = ctl->hint;
	if (now >= due && !(ctl && ctl->hold)) {
		struct sweep_walk w = { .now = now, .next = ~0ULL };

		if (ctl)
			sv->st.seen_seq = ctl->seq;
		bpf_for_each_map_elem(&elem4, sweep4, &w, 0);
		bpf_for_each_map_elem(&elem6, sweep6, &w, 0);
		sv->st.next_due = w.next;
		sv->st.walks++;
		sv->st.removed += w.removed;
	}
	bpf_timer_start(&sv->timer, SWEEP_TICK_MS * 1000000ULL, 0);
	return 0;
}

/* Arms the sweeper (the control plane test-runs it once when it loads the
 * program); re-arming a running sweeper only moves its callback here. */
SEC("xdp")
int sweep_start(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sweeper_val *sv = bpf_map_lookup_elem(&sweeper, &zero);

	if (!sv)
		return XDP_ABORTED;
	long err = bpf_timer_init(&sv->timer, &sweeper, CLOCK_MONOTONIC);
	if (err && err != -16) /* -EBUSY: already initialised */
		return XDP_ABORTED;
	if (bpf_timer_set_callback(&sv->timer, sweep_tick))
		return XDP_ABORTED;
	if (bpf_timer_start(&sv->timer, 1000000, 0))
		return XDP_ABORTED;
	return XDP_PASS;
}

/* ---- egress ----------------------------------------------------------------- */

/*
 * On tc egress of every attached interface: records the flows the host
 * opens (ct_outbound). Never changes or drops a packet; IPv6 packets with
 * extension headers and later fragments are not tracked.
 */
SEC("tc")
int egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct pkt p = {};
	__u32 zero = 0;
	__u64 off = 0;

	struct selector *sel = bpf_map_lookup_elem(&cfg_sel, &zero);
	if (!sel)
		return TC_NEXT;
	__u32 ci = sel->live & 1;
	struct config *c = bpf_map_lookup_elem(&cfg, &ci);
	if (!c || !c->established)
		return TC_NEXT;
	if (parse_eth(data, end, &p, &off) >= 0 || off > MAX_L3_OFF)
		return TC_NEXT;
	if (p.ethertype == ETH_P_IP) {
		if (parse_ip4(data, end, &p, off) >= 0)
			return TC_NEXT;
	} else if (p.ethertype == ETH_P_IPV6) {
		if (parse_ip6(data, end, &p, off) >= 0 || is_exthdr(p.proto) ||
		    parse_l4(data, end, &p, off + sizeof(struct ipv6hdr)) >= 0)
			return TC_NEXT;
	} else {
		return TC_NEXT;
	}
	if (p.fragment != 2)
		ct_outbound(c, &p);
	return TC_NEXT;
}

char LICENSE[] SEC("license") = "GPL";
