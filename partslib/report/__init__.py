"""The study's report, built from a run folder (``results/<profile>/``).

* :func:`write_report` / :func:`build_report`: ``report.html``, self-contained HTML and CSS:
  what was run, the headline against the targets, T2 as a method x operator matrix, T1 and T4
  compact, the figures beside the numbers they support.
* :func:`read_run` / :func:`load_run`: the merged ``metrics.json`` and ``timings.json`` of a run.
* :func:`targets_table`, :func:`headline_markdown`, :func:`update_readme`: the headline, also
  as the README block (``python -m partslib.report --profile default --readme``).
"""

from partslib.report.headline import (
                                      BESIDE,
                                      TARGETS,
                                      Run,
                                      Target,
                                      headline_markdown,
                                      headline_table,
                                      load_run,
                                      read_run,
                                      targets_table,
                                      update_readme,
                                      wall_time,
)
from partslib.report.page import build_report, write_report

__all__ = ["BESIDE", "TARGETS", "Run", "Target", "build_report", "headline_markdown",
           "headline_table", "load_run", "read_run", "targets_table", "update_readme",
           "wall_time", "write_report"]
