"""What a compression run reports: the paper-style accounting and report.json."""

from __future__ import annotations

from weightshare.report.accounting import paper_style, values_only, weight_entropy_bits
from weightshare.report.run_report import build_report, format_summary, write_report

__all__ = ["build_report", "format_summary", "paper_style", "values_only", "weight_entropy_bits", "write_report"]
