"""Offline evaluation of the rendezvous server: quality from labels, drift, promotion, replay, bandits.

Everything here is pure Python/pandas over records the job already writes (decision log, canary
records, decoy archive) plus labels that arrive later; nothing imports pyflink, and time is an
argument wherever it matters. `python -m evaluation --help` lists the commands.
"""
