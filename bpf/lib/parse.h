/* SPDX-License-Identifier: GPL-2.0 */
/* Parsing a frame once: Ethernet, VLAN tags, IPv4/IPv6 (extension headers), TCP/UDP/ICMP. */
#ifndef PYXDP_PARSE_H
#define PYXDP_PARSE_H

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
	__u8 no_flow;    /* set before finish: the reply guard says no flow can hold it */
	__u16 l4_off;    /* where the L4 header starts */
	__u16 icmp_id;
	__u16 rule_pos;  /* deciding rule's position + 1 */
	__u8 ban_missed; /* SH_BAN_FIRST: the leading ban set does not hold the source */
	__u8 pad2;
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

#endif /* PYXDP_PARSE_H */
