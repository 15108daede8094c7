"""Benchmarks of kafka-tenant-proxy against the raw limit and the naive loop.

``python -m benchmarks`` (``make bench``) starts the embedded broker, produces 200-byte records
with W3C baggage to 4-partition topics, and runs, in one go and each in its own process:

- the skip path: ``ktp sidecar`` with every tenant routed to a sandbox, against a raw aiokafka
  ``getmany`` loop;
- the deliver path: ``ktp sidecar`` delivering to a minimal HTTP app (another process), against
  the naive loop (aiokafka + httpx, one POST at a time) and the hand-rolled limit (aiokafka + one
  raw keep-alive HTTP/1.1 connection per partition), in ``partition`` and ``key`` ordering;
- the sidecar's CPU per record and peak RSS, read from ``/proc``;
- the added latency at a fixed 1,000 records/s;
- the decision cost (tenant extraction + route filter) with 10 and 100,000 tenants, in-process.

It prints one table of ratios against the baselines measured in the same run, checks the issue's
targets, and writes a CSV (with the machine, versions and date) and a PNG chart to
``benchmarks/results/``.
"""
