"""The teacher side: fine-tuning, per-layer probes, augmentation, and the knowledge store
that the search reads instead of running the teacher."""
