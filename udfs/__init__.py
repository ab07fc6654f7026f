"""Rendezvous logic: wire formats, policy, mailbox (pure Python) and the thin Flink adapter."""
