"""Analyses of the kNN graph: redundancy, near-duplicate groups, outliers."""
