// SPDX-License-Identifier: GPL-2.0
/* The floor for tc (egress) benchmarks: a tc program that only lets the packet go on. */
#include "../vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tc")
int tc_pass(struct __sk_buff *skb)
{
	return -1; /* TC_ACT_UNSPEC */
}

char LICENSE[] SEC("license") = "GPL";
