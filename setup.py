"""The packages: enrich_ray with every subpackage, and the repository's configs/ folder installed as
enrich_ray.configs, so the default YAML configs travel as package data, as do the report's templates
(enrich_ray/report/templates). Everything else: pyproject.toml."""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["enrich_ray", "enrich_ray.*"]), "enrich_ray.configs"],
    package_dir={"enrich_ray.configs": "configs"},
    package_data={"enrich_ray.configs": ["*.yaml"], "enrich_ray.report.templates": ["*.j2", "*.css", "*.js"]},
)
