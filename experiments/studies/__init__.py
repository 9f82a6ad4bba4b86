"""The studies, in the page's order: each module defines its runs, its section and its plot.

A study module has NAME, `runs(runner, options)` (builds its runs and hands them to the runner,
which runs what is not recorded yet, or only collects it when planning), `section(records,
plots)` (its part of docs/results.md, as lines) and, where it has one, `plot(records, path)`.
"""

from studies import budget, context, default, flops, gating, latency, long, lstm, norm

STUDIES = {m.NAME: m for m in (gating, norm, context, lstm, latency, default, long, flops, budget)}
ALL = ("gating", "norm", "context", "lstm", "latency")  # `run.py all`: the ~3-hour CPU set
