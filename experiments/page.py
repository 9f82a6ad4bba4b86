"""The results page's shared pieces: tables, section heads, budgets, machines, warnings."""

from __future__ import annotations

import statistics
from collections import defaultdict

from records import describe_machine

RUN = "python experiments/run.py"
QUIET = 1.5  # a figure is called quiet only if the load average stayed below this throughout


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def group(records: list[dict], key="variant") -> dict:
    """{key: records}; `key` names a record field or is a function of the record."""
    out: dict = defaultdict(list)
    for r in records:
        out[key(r) if callable(key) else r[key]].append(r)
    return dict(out)


def params(records: list[dict]) -> str:
    counts = sorted({r["model"]["params"] for r in records if r.get("model")})
    return " / ".join(f"{c / 1e6:.2f}M" if c >= 1e5 else f"{c:,}" for c in counts) or "–"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def load_of(record: dict) -> tuple[float | None, bool]:
    """The highest load average seen during a run, and whether it was sampled throughout
    (records before issue 17 sampled it at the start and the end only)."""
    load = record.get("load")
    if isinstance(load, dict) and load.get("max") is not None:
        return load["max"], True
    ends = [v for v in record.get("load_average") or [] if v is not None]
    return (max(ends), False) if ends else (None, False)


def load_text(records: list[dict]) -> str:
    """ "quiet" only where every run's load stayed below QUIET throughout; otherwise the load."""
    loads = [load_of(r) for r in records]
    known = [m for m, _ in loads if m is not None]
    if not known:
        return "load average not recorded"
    throughout = all(t for _, t in loads)
    if throughout and max(known) < QUIET:
        return f"quiet (load average below {QUIET} throughout every run)"
    low, high = min(known), max(known)
    span = f"{high:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}–{high:.1f}"
    how = "sampled through each run" if throughout else "sampled at each run's start and end"
    return f"not quiet: load average {span} ({how})"


def load_brief(record: dict) -> str:
    """The load average of one run, as briefly as the README's table allows."""
    high, throughout = load_of(record)
    if high is None:
        return "load not recorded"
    if throughout:
        return "quiet" if high < QUIET else f"load ≤ {high:.1f}"
    ends = [v for v in record.get("load_average") or [] if v is not None]
    return "load " + " → ".join(f"{v:.1f}" for v in ends) + " (start → end)"


def machines(records: list[dict]) -> str:
    described = sorted({describe_machine(r["machine"]) for r in records if r.get("machine")})
    precisions = sorted({r["config"]["precision"] for r in records if r.get("config")})
    text = "; ".join(described) or "–"
    return text + (f"; training precision {', '.join(precisions)}" if precisions else "")


def budget(records: list[dict]) -> str:
    trained = [r for r in records if r.get("done")]
    if not trained:
        return "–"
    r0 = trained[0]
    c = r0["config"]
    limits = []
    if c.get("max_updates"):
        limits.append(f"{c['max_updates']} updates")
    if c.get("max_minutes"):
        limits.append(f"{c['max_minutes']:g} minutes")
    if c.get("max_epochs"):
        limits.append(f"{c['max_epochs']} epochs")
    tokens = statistics.median(r["done"]["tokens"] for r in trained)
    epochs = statistics.median((r["done"]["epochs"] or 0) for r in trained)
    minutes = statistics.median(r["wall_s"] for r in trained) / 60
    valid = c.get("valid_tokens")
    evals = r0.get("eval") or {}
    counts = ", ".join(f"{v['tokens']:,} {k}" for k, v in evals.items())
    return (
        f"{' or '.join(limits) or 'train.py defaults'} of {c['tokens_per_batch']:,} tokens per run "
        f"(median {tokens / 1e6:.2f}M tokens, {epochs:.2f} epochs; {minutes:.1f} min per run with "
        f"its evaluation), {plural(len(trained), 'run')}; curves on "
        f"{f'the first {valid:,}' if valid else 'all'} validation tokens, final figures exact on "
        f"every token ({counts or 'no evaluation'})"
    )


def section_head(title: str, claim: str, records: list[dict], here: str, full: str) -> list[str]:
    return [
        f"## {title}",
        "",
        f"**Paper:** {claim}",
        "",
        f"- Command (as run here): `{here}`",
        f"- Full scale (WikiText-103, the paper's preset, GPUs): `{full}`",
        f"- Budget: {budget(records)}.",
        f"- Machine: {machines(records)}; {load_text(records)}.",
        "",
    ]


def no_records(title: str, command: str) -> list[str]:
    return [f"## {title}", "", f"No records yet: run `{command}`.", ""]


def image(name: str, paths: dict) -> list[str]:
    if name not in paths:
        return []
    return [f"![{name}]({paths[name]})", ""]


def edge_warning(name: str, chosen: float | None, swept: list[float]) -> list[str]:
    """A sweep whose best value is its largest or smallest has not found the optimum."""
    if chosen is None or len(set(swept)) < 2 or min(swept) < chosen < max(swept):
        return []
    side = "largest" if chosen == max(swept) else "smallest"
    return [
        f"- {name}: the chosen lr {chosen:g} is the {side} swept; a wider sweep could change "
        "the comparison.",
    ]
