"""Similarity index shards (faiss) and the kNN graph over frame embeddings."""
from enrich_ray.index.knn import KnnGraph, clustered_knn_graph, exact_knn_graph, knn_graph
from enrich_ray.index.shards import ShardedIndex, build_index

__all__ = ["KnnGraph", "ShardedIndex", "build_index", "clustered_knn_graph", "exact_knn_graph", "knn_graph"]
