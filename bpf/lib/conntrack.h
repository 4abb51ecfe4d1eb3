/* SPDX-License-Identifier: GPL-2.0 */
/* Connection state: flows the host opened (egress) and the replies that belong to them. */
#ifndef PYXDP_CONNTRACK_H
#define PYXDP_CONNTRACK_H

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

/*
 * The reply guard: per local port (TCP, UDP) or echo identifier (ICMP), the
 * time (coarse clock, ns) until which some flow using it may live; egress
 * raises it whenever it writes a flow's expiry. Entry CT_CLOCK is the
 * sweeper's clock (the time of its last tick), 0 until the control plane
 * arms the guard (when it covers every flow in the tables). A packet whose
 * port's guard is below the clock cannot be a reply: it skips the flow
 * lookup. Entries only grow: a port stays guarded until the longest timeout
 * of a flow that used it has run out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CT_GUARD_SLOTS + 1);
	__type(key, __u32);
	__type(value, __u64);
	PINNED;
} ctguard SEC(".maps");

/* ---- connection state ------------------------------------------------------ */

static __always_inline __u32 guard_slot(__u8 proto, __u16 lport)
{
	__u32 cls = proto == IPPROTO_TCP ? 0 : proto == IPPROTO_UDP ? 1 : 2;

	return cls << 16 | lport;
}

/* Whether no flow of protocol proto using local port (or echo id) lport can
 * be live: its guard is below the clock. */
static __always_inline int unguarded(__u8 proto, __u16 lport)
{
	__u32 k = CT_CLOCK; /* one key slot for both lookups: finish's frame is at 6.1's limit */
	__u64 *v = bpf_map_lookup_elem(&ctguard, &k);

	if (!v)
		return 0;
	__u64 clk = *v;
	k = guard_slot(proto, lport);
	v = bpf_map_lookup_elem(&ctguard, &k);
	return v && *v < clk;
}

/* Raise the guard of a flow's local port to cover its expiry; concurrent
 * raises on other CPUs are merged (compare and swap: the larger stays). When
 * the swap keeps losing, the port is guarded for good (safe: only the skip is
 * lost). */
static __always_inline void guard_raise(__u8 proto, __u16 lport, __u64 expires)
{
	__u32 gi = guard_slot(proto, lport);
	__u64 *g = bpf_map_lookup_elem(&ctguard, &gi);

	if (!g)
		return;
	for (int i = 0; i < 4; i++) {
		__u64 old = *g;
		if (old >= expires || __sync_val_compare_and_swap(g, old, expires) == old)
			return;
	}
	*g = ~0ULL;
}

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
 * Whether a segment arriving in a syn-sent flow answers the host's SYN: a
 * SYN-ACK, or a RST with ACK, whose ack is the host's ISN + 1 (the flow's
 * syn_ack). In SYN-SENT the host's TCP accepts nothing else (RFC 793 3.9,
 * RFC 5961 3.2) and answers a wrong ack with a RST of its own, which would
 * close the flow: a forged SYN-ACK must not get there. A global function:
 * only syn-sent flows reach it, and its header pointer kept in finish's frame
 * would take the call chain past 6.1's 512 bytes of stack (see ct_related).
 */
__noinline int ct_syn_answer(struct xdp_md *ctx, struct pkt *p, __u32 syn_ack)
{
	if (!ctx || !p)
		return 0;
	if (!(p->tcp_flags & TCP_ACK) || !(p->tcp_flags & (TCP_SYN | TCP_RST)))
		return 0;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 off = p->l4_off;
	if (off > MAX_L4_OFF)
		return 0;
	struct tcphdr *t = data + off;
	if ((void *)(t + 1) > end)
		return 0;
	return t->ack_seq == bpf_htonl(syn_ack);
}

/*
 * Whether the reply guard rules out that an arriving packet belongs to a
 * flow: a TCP or UDP packet by its destination port, an echo reply by its
 * identifier (the flow's local end). Run before finish, in xdp_filter's
 * frame: finish's is at the 512 bytes 6.1's verifier allows for the chain.
 */
static __always_inline int ct_guard(struct pkt *p)
{
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)
		return p->has_ports && unguarded(p->proto, p->dport);
	/* has_id: an echo request or reply (never an error), so not a request is a reply */
	if (p->proto == (p->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6) && p->has_id &&
	    !echo_request(p->proto, p->sport))
		return unguarded(p->proto, p->icmp_id);
	return 0;
}

/*
 * A DHCP (DHCPv6) server's answer to the host's request: UDP from port 67 to
 * 68 (547 to 546). It comes from the server's own address, to a broadcast
 * or to the offered address, while the request went to a broadcast
 * (multicast) address: no flow has the server as its remote end. It counts
 * as a reply when the host's own port 68 (546) is guarded, i.e. the host
 * sent from it within the UDP stream timeout (ct_guard set no_flow
 * otherwise, and the caller returned before the lookup).
 */
static __always_inline int dhcp_reply(struct pkt *p)
{
	if (p->proto != IPPROTO_UDP)
		return 0;
	return p->family == 4 ? p->sport == 67 && p->dport == 68 : p->sport == 547 && p->dport == 546;
}

/*
 * Whether an inbound packet belongs to a flow the host opened: R_ESTABLISHED,
 * R_RELATED (an ICMP error about one) or -1. A TCP SYN without ACK never
 * does (a new connection from outside is for the rules), nor, before the host
 * has acknowledged the answer, anything but the answer to its SYN (see
 * ct_syn_answer). Inbound packets never change a TCP flow (a forged RST or
 * FIN cannot end it); the first answer to a UDP flow moves it to its longer
 * "stream" timeout.
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
	if (p->no_flow)
		return -1; /* no flow on this port can be live (ct_guard): no lookup */
	f = arriving_flow(p, rport, lport);
	if (!f)
		return dhcp_reply(p) ? R_ESTABLISHED : -1; /* the common case for what is not a reply: no clock read */
	now = bpf_ktime_get_coarse_ns();
	if (now >= f->expires)
		return -1;
	if (p->proto == IPPROTO_TCP) {
		if (f->state == FS_SYN_SENT && !ct_syn_answer(ctx, p, f->syn_ack))
			return -1;
	} else if (f->state == FS_UDP) {
		f->state = FS_UDP_STREAM; /* within the guard: egress raised it by the stream timeout */
		f->expires = now + secs(c->timeout[FS_UDP_STREAM]);
	}
	return R_ESTABLISHED;
}

/*
 * Records what the host sends: a TCP SYN (without ACK), a UDP datagram or an
 * ICMP echo request starts a flow; later TCP segments move it on (the ACK of
 * the answer: established; a FIN: fin; a RST: close) but never start one or
 * bring back one that expired or closed. A SYN-ACK is the host answering a
 * connection someone else opened: not tracked. A SYN records isn + 1 (seq,
 * host order): the ack its answer must carry. The flow's expiry is rewritten
 * only when its state changes or it is older than FLOW_STALE_MS.
 */
static __always_inline void ct_outbound(struct config *c, struct pkt *p, __u32 isn)
{
	struct flow_key k = {};
	__u32 st, syn_ack = 0;
	int starts = 0;

	if (p->proto == IPPROTO_TCP) {
		__u8 fl = p->tcp_flags;
		if ((fl & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
			st = FS_SYN_SENT;
			starts = 1;
			syn_ack = isn + 1;
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
	/* a UDP flow's first answer moves it to the stream timeout from then on
	 * (ct_inbound, without raising the guard): guard that too */
	__u64 udp_more = p->proto == IPPROTO_UDP ? secs(c->timeout[FS_UDP_STREAM]) : 0;
	if (!f) {
		guard_raise(k.proto, k.lport, expires + udp_more);
		struct flow n = { .expires = expires, .state = st, .syn_ack = syn_ack };
		__u32 fam = k.family == 6;
		__u64 *made = bpf_map_lookup_elem(&flows_made, &fam);
		flow_put(&k, &n);
		if (made)
			*made += 1;
		return;
	}
	if (st == FS_SYN_SENT && f->syn_ack != syn_ack)
		f->syn_ack = syn_ack; /* a SYN with another ISN: the ports used anew */
	else if (f->state == st && f->expires + FLOW_STALE_MS * 1000000ULL >= expires)
		return;
	guard_raise(k.proto, k.lport, expires + udp_more);
	f->state = st;
	f->expires = expires;
}

#endif /* PYXDP_CONNTRACK_H */
