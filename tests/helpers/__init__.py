"""What the tests share: the reference model, packet builders, namespaces and sockets."""
