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
 * This file holds the entry points (xdp_filter, sweep_start, egress) and the
 * decision; each concern is a header in lib/: defs.h (constants), maps.h
 * (configuration, counters, journal), parse.h, sets.h, rules.h,
 * conntrack.h, trace.h, sweeper.h, included in that order (each uses only
 * those before it). What the datapath shares with the control plane is in
 * pyxdp.h.
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

/*
 * Knobs fixed before load (const volatile: the verifier prunes what they turn
 * off). `pyxdp-load replay` loads a second instance with trace_all = 1 and
 * count_hits = 0: an event for every test packet, and live hit counters left
 * alone. The attached filter keeps the defaults.
 */
const volatile struct knobs knobs = { .trace_all = 0, .count_hits = 1, .rule_words = DEFAULT_RULE_WORDS, .shape = 0 };

/* Whether the loaded program keeps part `sh` (enum shape) of the datapath. */
#define HAS(sh) (!(knobs.shape & (sh)))
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
	enum shape sh;
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

#include "lib/defs.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/sets.h"
#include "lib/rules.h"
#include "lib/conntrack.h"
#include "lib/trace.h"
#include "lib/sweeper.h"

/* ---- the decision ---------------------------------------------------------- */

static __always_inline int decide(struct xdp_md *ctx, struct config *c, struct pkt *p, __u32 *verdict, int fast)
{
	if (p->ethertype == ETH_P_ARP) {
		*verdict = V_PASS;
		return R_ARP;
	}
	if (p->is_nd) {
		*verdict = V_PASS;
		return R_ND;
	}
	if (HAS(SH_NO_STATE) && c->established && p->family && p->fragment != 2) {
		int r = ct_inbound(ctx, c, p);
		if (r >= 0) {
			*verdict = V_PASS;
			return r;
		}
	}
	if (HAS(SH_NO_RULES) && c->nrules && p->family) {
		int m = fast ? match_fast(ctx, p, c->rgen, c->nrules) : match_rules(ctx, p, c->rgen);
		if (m == ACT_ALLOW || m == ACT_DENY) {
			*verdict = m == ACT_ALLOW ? V_PASS : V_DROP;
			return m == ACT_ALLOW ? R_RULE_ALLOW : R_RULE_DENY;
		}
	}
	*verdict = c->policy == V_DROP ? V_DROP : V_PASS;
	return p->fragment == 2 ? R_FRAGMENT : R_POLICY;
}

/* Everything after parsing: the decision, the counters, tracing. Returns the
 * XDP action. fast: the rule step through the fast paths (match_fast). */
static __always_inline int finish_body(struct xdp_md *ctx, struct pkt *p, int reason, __u32 cfg_idx, int fast)
{
	__u32 verdict = V_DROP, idx;
	__u32 len;

	struct config *c = bpf_map_lookup_elem(&cfg, &cfg_idx);
	if (!c)
		return XDP_PASS;
	len = ctx->data_end - ctx->data;
	if (reason < 0 || reason >= R_MAX)
		reason = decide(ctx, c, p, &verdict, fast);

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
	else if (HAS(SH_NO_TRACE) && c->trace_every && (c->trace_every == 1 || bpf_get_prandom_u32() % c->trace_every == 0))
		trace(ctx, p, reason, verdict, len);
	return verdict == V_DROP ? XDP_DROP : XDP_PASS;
}

/*
 * The same in a global function: the verifier checks it once instead of
 * once per parser path (VLAN depth x family x extension headers). The
 * general program (xdp_filter) calls it; xdp_filter_fast inlines it.
 */
__noinline int finish(struct xdp_md *ctx, struct pkt *p, int reason, __u32 cfg_idx)
{
	if (!ctx || !p)
		return XDP_PASS;
	return finish_body(ctx, p, reason, cfg_idx, 0);
}

static __always_inline int filter(struct xdp_md *ctx, int fast)
{
	struct pkt p = {};
	__u32 zero = 0;

	struct selector *sel = bpf_map_lookup_elem(&cfg_sel, &zero);
	if (!sel)
		return XDP_PASS;
	int reason = parse(ctx, &p);
	if (HAS(SH_NO_STATE) && reason < 0 && p.family && p.fragment != 2)
		p.no_flow = ct_guard(&p);
	if (fast)
		return finish_body(ctx, &p, reason, sel->live & 1, 1);
	return finish(ctx, &p, reason, sel->live & 1);
}

/* The filter: what every arriving packet runs. */
SEC("xdp")
int xdp_filter(struct xdp_md *ctx)
{
	return filter(ctx, 0);
}

/*
 * The same decisions with the fast paths (knobs.shape SH_BAN_FIRST,
 * SH_PORT_RULES; see match_fast) and without the call into finish: its
 * verification takes longer (once per parser path), so it is its own
 * program, loaded instead of xdp_filter for rule sets of those forms. Its
 * deepest chain (xdp_filter_fast -> match_rules -> set_has -> trie_step) has
 * one frame fewer than xdp_filter's, a bigger first one.
 */
SEC("xdp")
int xdp_filter_fast(struct xdp_md *ctx)
{
	return filter(ctx, 1);
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
	if (!c || !c->established) /* not shaped: one egress program serves every shape */
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
	if (p.fragment == 2)
		return TC_NEXT;
	__u32 seq = 0;
	if (p.proto == IPPROTO_TCP) {
		__u64 l4 = p.l4_off;
		struct tcphdr *t = data + l4;
		if (l4 > MAX_L4_OFF || (void *)(t + 1) > end)
			return TC_NEXT;
		seq = bpf_ntohl(t->seq);
	}
	ct_outbound(c, &p, seq);
	return TC_NEXT;
}

char LICENSE[] SEC("license") = "GPL";