"""device_bench: latency, memory and energy measurement of artifacts on hosts and devices."""
