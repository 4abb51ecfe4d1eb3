/* SPDX-License-Identifier: GPL-2.0 */
/* Trace events: sampled packets with their decision and first bytes, to a ring buffer. */
#ifndef PYXDP_TRACE_H
#define PYXDP_TRACE_H

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	PINNED;
} events SEC(".maps");

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

#endif /* PYXDP_TRACE_H */
