// SPDX-License-Identifier: GPL-2.0
/* Rejected by the verifier on purpose (reads the packet without a bounds
 * check): the CLI tests check that the verifier's own words reach the user. */
#include "../../vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("xdp")
int unchecked(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;

	return data[20] == 1 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
