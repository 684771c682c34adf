"""Metrics: what the tasks report, computed from whole subsets (classification, identification),
their bootstrap intervals, and the per-record results files they can be recomputed from."""
