"""fluxcore benchmark harness.

Every system (fluxcore and the peers a user would pick instead) runs the same
workloads on the same payload bytes in one run; `bench.run` prints a table and
writes JSON rows. Throughput is reported as a ratio to the peers and to the
machine's own memcpy speed, never as a pass/fail timing test.
"""
