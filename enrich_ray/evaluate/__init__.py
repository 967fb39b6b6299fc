"""Evaluation of rankings on labeled data (paper Fig. 1 and 3): datasets, classifier, statistics, plots."""
