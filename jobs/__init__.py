"""Entry points that build a Flink topology from a config and run it."""
