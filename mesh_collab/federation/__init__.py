"""Federation: rooms of one notebook on several nodes (sites), linked into one live room."""
