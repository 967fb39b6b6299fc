"""enrich_ray: rank medical images by how much new information each adds."""

__version__ = "0.1.0"
