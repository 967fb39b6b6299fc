"""`python -m enrich_ray` does what the `enrich-ray` command does."""
import sys

from enrich_ray.cli import main

sys.exit(main())
