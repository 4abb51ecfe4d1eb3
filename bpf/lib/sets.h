/* SPDX-License-Identifier: GPL-2.0 */
/* Sets of prefixes with expiries, epochs and hit counters: the tables and the membership test. */
#ifndef PYXDP_SETS_H
#define PYXDP_SETS_H

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
	/* one key buffer for both families (an rkey4 is an rkey6's first 12
	 * bytes): this frame is the last of the deepest call chain (see
	 * tests/unit/test_build.py) */
	struct rkey6 k = { .plen = plen, .tag = sid };
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

		__builtin_memcpy(k.addr, &addr, 4);
		v = bpf_map_lookup_elem(&trie4, &k);
		if (!v)
			return 0;
		l = *v;
		if (l < 32 || l > 64)
			return 0;
		k.plen = l;
		addr &= mask_word(l - 32);
		__builtin_memcpy(k.addr, &addr, 4);
		e = bpf_map_lookup_elem(&elem4, &k);
	} else {
		const __u32 *a = dir ? p->daddr6.in6_u.u6_addr32 : p->saddr6.in6_u.u6_addr32;

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

/* The hashed lengths of a set (one hash probe each): 1 when a visible
 * element holds the address (its hit counted), else 0. */
static __always_inline int hashed4(struct set_info *si, __u32 sid, __u32 addr)
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
	return 0;
}

static __always_inline int hashed6(struct set_info *si, __u32 sid, const __u32 *a)
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
	if (hashed4(si, sid, addr))
		return 1;
	if (!si->trie4)
		return 0;
	if (!guarded(sid * 2, bpf_ntohl(addr) >> 16))
		return 0;
	return trie_walk(p, dir, sid, 64);
}

static __always_inline int set_has6(struct set_info *si, struct pkt *p, __u32 dir, __u32 sid, const __u32 *a)
{
	if (hashed6(si, sid, a))
		return 1;
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

/*
 * The same test inlined, for SH_BAN_FIRST's one probe before the rules: the
 * hashed lengths without a call; only a set whose trie may hold an element
 * covering the address (the trie guard's bit) goes on to set_has (which
 * probes the hashed lengths again, then walks the trie).
 */
static __always_inline int set_probe(struct pkt *p, __u32 dir, __u32 sid)
{
	if (p->family == 4) {
		struct set_info *si = bpf_map_lookup_elem(&sets, &sid);
		__u32 addr = dir ? p->daddr4 : p->saddr4;

		if (!si)
			return 0;
		if (hashed4(si, sid, addr))
			return 1;
		if (!si->trie4 || !guarded(sid * 2, bpf_ntohl(addr) >> 16))
			return 0;
	}
	return set_has(p, dir, sid);
}

#endif /* PYXDP_SETS_H */
