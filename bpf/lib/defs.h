/* SPDX-License-Identifier: GPL-2.0 */
/* Protocol numbers and constants the datapath uses that vmlinux.h lacks (macros in UAPI). */
#ifndef PYXDP_DEFS_H
#define PYXDP_DEFS_H

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
/* IPv6 next-header values (in uapi/linux/in6.h as macros, so not in BTF) */
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10
#define TC_NEXT (-1) /* TC_ACT_UNSPEC: the next tc filter (if any) decides; the packet goes on */
#define MAX_L3_OFF (14 + 4 * MAX_VLAN)
#define DEFAULT_RULES (DEFAULT_RULE_WORDS * 64)
#define CLASSES(r) (CLASS_PER_RULE * (r) + CLASS_EXTRA)
#define CLOCK_MONOTONIC 1

#endif /* PYXDP_DEFS_H */
