"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/nightly.py ...` runs `enrich-ray nightly`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir holds the package

from enrich_ray.cli import main  # noqa: E402

sys.exit(main(["nightly", *sys.argv[1:]]))
