"""Pure and without root: prefixes, the rule grammar, the classifier compiler,
rule-set files, pcap files and connection timeouts."""
