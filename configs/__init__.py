"""The default YAML config of each job. pyproject.toml installs this folder as the package
`enrich_ray.configs`, so an installed enrich_ray reads them as package data (importlib.resources)."""
