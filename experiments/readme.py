"""README.md's measured table, generated from the records between two markers.

`python experiments/report.py` rewrites the block between BEGIN and END; tests/test_readme_table.py
fails when the committed README differs from what the committed records give. Every figure in the
block names its record; a figure is called quiet only where the load stayed below page.QUIET
throughout its run, otherwise the load is stated.
"""

from __future__ import annotations

from page import QUIET, load_brief, load_of
from records import describe_machine, test_ppl, valid_ppl
from stats import arm, cell, verdict
from studies.budget import budgets
from studies.default import DEFAULT_MODEL, wall_minutes
from studies.latency import evaluated, roofline

from gcnn.errors import GcnnError

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"


def source(record: dict) -> str:
    return f"`{record['study']}/{record['run_id']}`"


def training_row(what: str, record: dict) -> list[str]:
    d = record["done"]
    figure = (
        f"{wall_minutes(record):.1f} min{' (resumed)' if record.get('resumed') else ''}; "
        f"{d['updates']:,} updates; valid {valid_ppl(record):.2f}, test **{test_ppl(record):.2f}**"
    )
    return [what, f"`{record['label']}`", figure, load_brief(record), source(record)]


def latency_rows(records: list[dict]) -> list[list[str]]:
    """gcnn-8b vs lstm-2048 (Table 4's models), each precision: latency and the roofline."""
    rows = []
    by_precision: dict[str, list] = {}
    for r, x in evaluated(records):
        by_precision.setdefault(r["info"]["precision"], []).append((r, x))
    for precision, entries in sorted(by_precision.items()):
        g = next((e for e in entries if e[1]["model"] == "gcnn-8b"), None)
        lstm = next((e for e in entries if e[1]["model"] == "lstm-2048"), None)
        if not (g and lstm):
            continue
        r = g[0]
        ratio = lstm[1]["latency_ms"] / g[1]["latency_ms"]
        rows.append(
            [
                f"gcnn-8b vs lstm-2048, one {g[1].get('sentence_length', 30)}-token sentence "
                f"({precision}, one thread)",
                f"`{r['command']}`",
                f"{g[1]['latency_ms']:.2f} vs {lstm[1]['latency_ms']:.2f} ms (medians): "
                f"{ratio:.1f}x",
                load_brief(r),
                source(r),
            ]
        )
    bench = None
    for r in sorted(records, key=lambda r: r["run_id"]):
        if r["info"].get("tool") != "roofline" or "gcnn-8b" not in r["info"].get("models", []):
            continue
        bench = bench or roofline()
        lines = [line for line in bench.pair_lines(bench.parse_rows(r["stdout"]))]
        ceiling = lines[0].split("; ", 1)[1] if lines else "no table"
        if ceiling.startswith("no ceiling"):
            ceiling = (
                "flagged: measured below its bound (the record's peaks were too low); no ceiling"
            )
        rows.append(
            [
                f"most any GCNN could gain over that LSTM ({r['info']['precision']}, one thread)",
                f"`{r['command']}`",
                ceiling,
                load_brief(r),
                source(r),
            ]
        )
    return rows


def budget_rows(records: list[dict]) -> list[list[str]]:
    """GCNN against LSTM at the largest budget of each kind (time, FLOPs), every seed's run
    ending its own schedule there: both families' test perplexity and the verdict."""
    rows = []
    grouped = budgets(records)
    for (kind, amount), by_family in grouped.items():
        if amount != max(a for k, a in grouped if k == kind):
            continue
        if not {"gcnn", "lstm"} <= set(by_family):
            continue
        g, lstm = by_family["gcnn"], by_family["lstm"]
        unit, suffix = ("min", "min") if kind == "time" else ("PFLOP", "pflop")
        what = f"{amount:g} {unit}"
        highs = [load_of(r)[0] for r in g + lstm]
        load = "load not recorded" if None in highs else (
            "quiet" if max(highs) < QUIET else f"load ≤ {max(highs):.1f}"
        )  # fmt: skip
        rows.append(
            [
                f"gcnn-small vs the parameter-matched LSTM, {what} of training, each schedule "
                f"ending there (test ppl, {len(g)} and {len(lstm)} seeds)",
                "`python experiments/run.py budget`",
                f"{cell(g)} vs {cell(lstm)}; {verdict(arm('GCNN', g), arm('LSTM', lstm))}",
                load,
                f"`budget/gcnn-{amount:g}{suffix}-s*`, `budget/lstm-{amount:g}{suffix}-s*`",
            ]
        )
    return rows


def block(by_study: dict[str, list[dict]]) -> str:
    """The generated table (BEGIN and END included)."""
    rows = []
    named = {
        ("default", DEFAULT_MODEL): f"the default training run ({DEFAULT_MODEL}, WikiText-2)",
        ("default", "lstm-small"): "the LSTM baseline, same time budget",
        ("long", "gcnn"): "the longer CPU recipe",
        ("long", "lstm"): "the longer LSTM recipe",
        ("long", "lstm-dropout0.3"): "the longer LSTM recipe at dropout 0.3",
    }
    for (study, variant), what in named.items():
        for r in sorted(by_study.get(study, []), key=lambda r: r["seed"]):
            if r["variant"] == variant and test_ppl(r):
                rows.append(training_row(what, r))
    rows += budget_rows(by_study.get("budget", []))
    rows += latency_rows(by_study.get("latency", []))
    lines = [
        BEGIN,
        "Generated by `python experiments/report.py` from the records in the last column (do "
        "not edit by hand). Machine: "
        + (describe_machine(rows_machine(by_study)) if rows_machine(by_study) else "–")
        + f". A figure is called quiet only if the load average stayed below {QUIET} through "
        "its run; otherwise the load is given (records before issue 17 sampled it at the start "
        "and the end only).",
        "",
        "| what | command | figure | load average | record (experiments/records/) |",
        "|---|---|---|---|---|",
        *["| " + " | ".join(row) + " |" for row in rows],
        END,
    ]
    return "\n".join(lines)


def rows_machine(by_study: dict[str, list[dict]]) -> dict | None:
    """The machine of the default run's record (the others were made on the same one)."""
    for study in ("default", "long", "latency"):
        for r in by_study.get(study, []):
            if r.get("machine"):
                return {**r["machine"], "threads": "1–2"}
    return None


def rewrite(text: str, new_block: str) -> str:
    """`text` with its block between the markers replaced by `new_block`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise GcnnError(
            f"README has no {BEGIN!r} ... {END!r} block; add the two markers where the measured "
            "table goes"
        )
    return text[:start] + new_block + text[end + len(END) :]


def current(text: str) -> str | None:
    start, end = text.find(BEGIN), text.find(END)
    return text[start : end + len(END)] if 0 <= start < end else None
