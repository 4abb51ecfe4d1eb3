/* SPDX-License-Identifier: GPL-2.0 */
/* The ordered rules: bit-vector classification, one lookup per field (match_rules). */
#ifndef PYXDP_RULES_H
#define PYXDP_RULES_H

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
		if (HAS(SH_NO_LIT4) && rs->fields & (dir ? RS_LIT4_DST : RS_LIT4_SRC)) {
			struct rkey4 k = { .plen = 64, .tag = gen * 2 + dir, .addr = dir ? p->daddr4 : p->saddr4 };
			v = bpf_map_lookup_elem(&rlit4, &k);
		}
		return v ? *v : rs->lit_dflt[dir * 2];
	}
	if (HAS(SH_NO_LIT6) && rs->fields & (dir ? RS_LIT6_DST : RS_LIT6_SRC)) {
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
		if ((knobs.shape & SH_BAN_FIRST) && !i && !dir && p->ban_missed)
			continue; /* the ban set: probed already (match_fast), it does not hold the source */
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

/* Rule pos of generation gen decides the packet: its hit counted, noted in
 * p. Returns its action, or -1. */
static __always_inline int rule_decides(struct xdp_md *ctx, struct pkt *p, __u32 gen, __u32 pos)
{
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

/*
 * The first rule of generation gen that the packet (IPv4 or IPv6) matches.
 * Returns its action (and notes it in p), or -1. A field no rule constrains
 * is not looked up: its class is the all-ones vector. A global function:
 * the walk is verified once, and a packet pays the call only when rules
 * exist. With p->ban_missed (SH_BAN_FIRST: the leading ban set was probed and
 * does not hold the source), the first source set is not probed again.
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
	c_proto = HAS(SH_NO_PROTO) && f & F_PROTO ? rs->proto_cls[pc & 7] : all;
	/* a rule names another protocol (esp, gre, 112): 256 classes, one per protocol number */
	if (HAS(SH_NO_PROTO) && f & RS_PROTO_NUM && pc == 4)
		c_proto = rs->proto_cls[5] + p->proto;
	c_src = lit_class(rs, gen, 0, p);
	c_dst = lit_class(rs, gen, 1, p);
	c_sset = HAS(SH_NO_SETS) && f & F_SSET ? set_class(rs, 0, p) : all;
	c_dset = HAS(SH_NO_SETS) && f & F_DSET ? set_class(rs, 1, p) : all;
	c_sport = HAS(SH_NO_PORTS) && f & F_SPORT ? port_class(rs, gen, 0, p) : all;
	c_dport = HAS(SH_NO_PORTS) && f & F_DPORT ? port_class(rs, gen, 1, p) : all;
	c_if = all;
	if (HAS(SH_NO_IFACE) && f & F_IFACE) {
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
		return rule_decides(ctx, p, gen, i * 64 + lowest_bit(w));
	}
	return -1;
}

/*
 * SH_PORT_RULES: the rules (after a leading ban, SH_BAN_FIRST) constrain at
 * most the protocol and the destination port. The class of the packet's
 * port (one array lookup by port) and of its protocol give the two vectors
 * to AND; no call. skip0: rule 1 is the ban rule, already found not to
 * match.
 */
static __always_inline int match_ports(struct xdp_md *ctx, struct pkt *p, struct ruleset *rs, __u32 gen,
				       __u64 skip0)
{
	__u32 f = rs->fields, c_proto = rs->all_cls, c_dport = rs->all_cls;

	if (f & F_PROTO) {
		__u32 pc = p->proto == IPPROTO_TCP ? 0 : p->proto == IPPROTO_UDP ? 1 : p->proto == IPPROTO_ICMP ? 2 :
			   p->proto == IPPROTO_ICMPV6 ? 3 : 4;
		c_proto = rs->proto_cls[pc & 7];
	}
	if (f & F_DPORT)
		c_dport = port_class(rs, gen, 1, p);
	__u64 *a = bpf_map_lookup_elem(&rvec, &c_proto);
	__u64 *h = bpf_map_lookup_elem(&rvec, &c_dport);
	if (!a || !h)
		return -1;
	__u32 words = rs->n_words, nw = knobs.rule_words;
	if (words == 1) { /* up to 64 rules: one word, no walk */
		__u64 w = a[0] & h[0] & ~skip0;
		return w ? rule_decides(ctx, p, gen, lowest_bit(w)) : -1;
	}
	if (nw > MAX_RULE_WORDS)
		return -1;
	__u64 start = a[nw] > h[nw] ? a[nw] : h[nw];
	if (start > nw)
		start = nw;
	for (__u32 n = 0; n < MAX_RULE_WORDS; n++) {
		__u64 i = start + n;
		if (i >= words || i >= nw)
			break;
		barrier_var(i);
		__u64 w = a[i] & h[i];
		if (i == 0)
			w &= ~skip0;
		if (!w)
			continue;
		return rule_decides(ctx, p, gen, i * 64 + lowest_bit(w));
	}
	return -1;
}

/*
 * The rule step of a program with a fast path (SH_BAN_FIRST, SH_PORT_RULES),
 * inlined in the entry point. The compiler marks a generation's rule set
 * with the forms it has (RS_BAN_FIRST, RS_PORT_RULES in ruleset.fields): a
 * fast path is taken only when the program has it and the live rule set has
 * that form, so any program is right on any rule set (a program is replaced
 * before or after the switch to the rules it was chosen for). Ban first:
 * rule 1 is `deny from @SET` alone (its set the first source set): one
 * probe of that set, no call; a hit is rule 1. What the ban does not decide
 * goes to the port walk (every other rule constrains at most the protocol
 * and the destination port) or to match_rules, which then does not probe
 * that set again.
 */
static __always_inline int match_fast(struct xdp_md *ctx, struct pkt *p, __u32 gen, __u32 nrules)
{
	__u64 skip0 = 0;

	gen &= 1;
	struct ruleset *rs = bpf_map_lookup_elem(&rsets, &gen);
	if (!rs)
		return -1;
	__u32 f = rs->fields;
	if ((knobs.shape & SH_BAN_FIRST) && (f & RS_BAN_FIRST)) {
		if (set_probe(p, 0, rs->sets[0][0]))
			return rule_decides(ctx, p, gen, 0);
		if (nrules <= 1)
			return -1;
		skip0 = 1;
		p->ban_missed = 1;
	}
	if ((knobs.shape & SH_PORT_RULES) && (f & RS_PORT_RULES) && (skip0 || !(f & RS_BAN_FIRST)))
		return match_ports(ctx, p, rs, gen, skip0);
	return match_rules(ctx, p, gen);
}

#endif /* PYXDP_RULES_H */
