"""The embedded demo model: its configs, weights and loader (see README)."""
