"""`harness report`: one static HTML page (index.html and its PNGs, relative links, no script) from the run
records, with the leaderboard's numbers drawn as figures.

- build.py: reads the records and the leaderboard's tables (collect, summarise, compare, section_layouts;
  nothing recomputed), draws the figures and writes the folder atomically (temp folder, then rename).
- data.py: what each figure draws, as plain data (tested against compare()'s numbers).
- figures.py: matplotlib (Agg), one PNG per figure.
- page.py: the Jinja2 template.
"""

from harness.report.build import ReportError, ReportSummary, write_report

__all__ = ["ReportError", "ReportSummary", "write_report"]
