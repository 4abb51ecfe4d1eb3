// SPDX-License-Identifier: GPL-2.0
/* The seed article's program, as a CO-RE object: print "got a packet" for
 * every packet and pass it. Load it with
 *   pyxdp-load load examples/packets.bpf.o lo
 *   pyxdp-load printk            # streams trace_pipe
 */
#include "../vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("xdp")
int packetfilter(struct xdp_md *ctx)
{
	bpf_printk("got a packet");
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
