"""Task data: the GLUE task specs, loading, tokenization and batching, metrics."""
