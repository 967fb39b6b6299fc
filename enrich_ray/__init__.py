"""enrich_ray: rank medical images by how much new information each adds."""
