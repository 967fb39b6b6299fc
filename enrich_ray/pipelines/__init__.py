"""Stages chained into jobs: curate, select, nightly, evaluate; resume markers."""
