"""The human-readable report: report.html with the redundancy and coverage curves, galleries and tables."""
from enrich_ray.report.html import collapse_warnings, render_report, write_report

__all__ = ["collapse_warnings", "render_report", "write_report"]
