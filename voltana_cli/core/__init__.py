"""voltana's library: pure policies, performance models, workloads, simulator and metrics."""
