"""Workloads: Azure trace readers, pipeline, synthetic traces, the simulator and the replay."""
