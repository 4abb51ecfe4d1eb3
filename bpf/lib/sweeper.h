/* SPDX-License-Identifier: GPL-2.0 */
/* The expiry sweeper: a BPF timer that removes expired and removed set elements. */
#ifndef PYXDP_SWEEPER_H
#define PYXDP_SWEEPER_H

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
	__u32 ci = CT_CLOCK;
	__u64 *clk = bpf_map_lookup_elem(&ctguard, &ci);
	if (clk && *clk && now > *clk) /* armed: the reply guard's clock */
		*clk = now;
	bpf_timer_start(&sv->timer, SWEEP_TICK_MS * 1000000ULL, 0);
	return 0;
}

#endif /* PYXDP_SWEEPER_H */
