// SPDX-License-Identifier: GPL-2.0
/*
 * Benchmark build of the shipped datapath (benchmarks/sweeper.py): the program
 * as it is, plus one test-run program that makes the expiry sweeper's walk
 * (both element hashes, with the sweeper's own callbacks) once, so that
 * BPF_PROG_TEST_RUN times it. Loaded on a state's pinned maps; never shipped.
 */
#include "../bpf/xdp_filter.bpf.c"

SEC("xdp")
int sweep_walk_bench(struct xdp_md *ctx)
{
	struct sweep_walk w = { .now = bpf_ktime_get_coarse_ns(), .next = ~0ULL };

	bpf_for_each_map_elem(&elem4, sweep4, &w, 0);
	bpf_for_each_map_elem(&elem6, sweep6, &w, 0);
	return (int)w.removed;
}
