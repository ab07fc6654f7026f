"""The harnesses around the product: the `rendezvous` entry point, the demo, the load generator, the
benchmarks, the fault suite, the profiler and the scenarios. Nothing of the product imports them."""
