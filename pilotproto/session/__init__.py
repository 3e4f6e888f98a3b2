"""Sessions with peers: one record per peer (tunnel, path, streams), traversal and NAT probing."""
