"""Everything that makes a syscall: the libbpf binding, BPF objects, maps and
programs, bpffs and the capability check, XDP and tc attach, rtnetlink reads,
and the loader for any other XDP object."""
