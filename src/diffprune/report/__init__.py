"""The report stage: Markdown and a self-contained HTML page built only from a run directory's files.

Public API: ``build_report(run_dir | [run_dirs], out_dir=None) -> Path`` (the ``report.md`` path).
"""
from diffprune.report.build import build_report
from diffprune.report.collect import ArmResult, RunSummary, collect_run
from diffprune.report.errors import ReportError

__all__ = ["ArmResult", "ReportError", "RunSummary", "build_report", "collect_run"]
