"""Hardware-in-the-loop recipe search: the measured Pareto front of accuracy x latency x size per target."""
