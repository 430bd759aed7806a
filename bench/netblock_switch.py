"""Run netblock with a shorter GIL switch interval (bench variant `netblock-switch`).

The query loop shares the GIL with netblock's background threads (events writer, policy
watcher, metrics, device sources). A thread that holds the GIL keeps it up to
sys.getswitchinterval() (5 ms by default) before the loop gets it back, which shows up in
the latency tail; this wrapper measures the tail with 0.5 ms instead.
"""

import runpy
import sys

sys.setswitchinterval(0.0005)
sys.argv[0] = "netblock"
runpy.run_module("netblock", run_name="__main__", alter_sys=True)
