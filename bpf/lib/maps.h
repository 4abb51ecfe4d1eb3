/* SPDX-License-Identifier: GPL-2.0 */
/* The program's own maps: configuration, journal, counters, interfaces, RCU grace period.
 * Each concern's tables are in its header (rules.h, sets.h, conntrack.h, trace.h, sweeper.h). */
#ifndef PYXDP_MAPS_H
#define PYXDP_MAPS_H

#define PINNED __uint(pinning, LIBBPF_PIN_BY_NAME)

#define TRIE(_name, _key, _value, _cap)                         \
	struct {                                                \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);            \
		__uint(max_entries, _cap);                      \
		__uint(map_flags, BPF_F_NO_PREALLOC);           \
		__type(key, _key);                              \
		__type(value, _value);                          \
		PINNED;                                         \
	} _name SEC(".maps")

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

#endif /* PYXDP_MAPS_H */
