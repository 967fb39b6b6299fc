"""The report page's Jinja2 template and stylesheet (package data, so an installed enrich_ray renders it)."""
