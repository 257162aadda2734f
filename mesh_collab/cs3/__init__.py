"""CS3 storage: the async client (this package) and the embedded gateway (``gateway/``)."""
