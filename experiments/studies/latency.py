"""Study 5, latency (paper Table 4): its commands, its section of the page, its plot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from page import RUN, image, load_brief, load_text, machines, no_records, table
from plots import finish, pyplot, save
from records import ROOT
from runner import Run, Runner
from study import StudyOptions, selected

NAME = "latency"


def runs(runner: Runner, o: StudyOptions) -> None:
    """`evaluate.py latency` (throughput, responsiveness) and `benchmarks/bench_roofline.py` for
    each pair of models and precision, one thread (the machine is shared), output recorded."""
    runs = []
    for pair in o.latency_models:
        models = [m for m in pair.split(",") if m]
        slug = "-".join(models)
        for precision in o.precisions:
            common = ["--precision", precision, "--threads", "1", "--repeats", str(o.repeats)]
            tools = {
                "evaluate": ("evaluate.py", ["latency", *models, *common, "--json"]),
                "roofline": ("benchmarks/bench_roofline.py", ["--models", *models, *common]),
            }
            for tool in o.tools:
                script, args = tools[tool]
                run_id = f"{tool}-{slug}-{precision}"
                label = f"{script} {precision}"
                info = {"models": models, "precision": precision, "tool": tool}
                args = [*args, *o.latency_args]
                runs.append(
                    Run("latency", run_id, None, args, script=script, label=label, info=info)
                )
    runner.run(selected(o, runs))


# --- the page ---------------------------------------------------------------------------------

# Paper Table 4 (Google Billion Word models at ≈43.9 ppl), tokens/s: (CPU throughput, GPU
# throughput, GPU responsiveness). Our gcnn-8b / lstm-2048 are those architectures.
PAPER = {"lstm-2048": (169, 45622, 2282), "gcnn-8b": (179, 45878, 45878)}


def roofline():
    """benchmarks/bench_roofline.py as a module: its table is read back with its own code."""
    spec = importlib.util.spec_from_file_location(
        "bench_roofline", ROOT / "benchmarks" / "bench_roofline.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def evaluated(records: list[dict]) -> list[tuple[dict, dict]]:
    """(record, one model's result) of every `evaluate.py latency` record, in run-id order."""
    ok = [r for r in records if r["info"].get("tool") == "evaluate" and r.get("json")]
    return [(r, x) for r in sorted(ok, key=lambda r: r["run_id"]) for x in r["json"]]


def iqr(pair) -> str:
    return f"{pair[0]:,.0f}–{pair[1]:,.0f}" if pair else "–"


def section(records: list[dict], plots: dict) -> list[str]:
    title = "5. Latency (paper Table 4)"
    if not records:
        return no_records(title, f"{RUN} latency")
    lines = [
        f"## {title}",
        "",
        "**Paper** (Google Billion Word models at ≈43.9 ppl; tokens/s): LSTM-2048 CPU 169, GPU "
        "throughput 45,622, GPU responsiveness 2,282; GCNN-9 121 / 29,116 / 29,116; GCNN-8B "
        "179 / 45,878 / 45,878. On a CPU the paper has the two at parity; the 20× responsiveness "
        "is a GPU figure.",
        "",
        f"- Command (as run here): `{RUN} latency`",
        f'- On a GPU: `{RUN} latency --tools evaluate --latency-args "--device cuda" '
        "--records experiments/records/gpu`",
        f"- Machine: {machines(records)}; {load_text(records)}.",
        "",
    ]
    rows, claims, lengths = [], [], set()
    for r, x in evaluated(records):
        lengths.add(x.get("sentence_length"))
        paper = PAPER.get(x["model"])
        rows.append(
            [
                x["model"],
                x.get("precision", r["info"]["precision"]),
                f"{x['params'] / 1e6:.1f}M",
                f"{x['throughput']:,.0f} ({iqr(x.get('throughput_iqr'))})",
                f"{x['responsiveness']:,.0f} ({iqr(x.get('responsiveness_iqr'))})",
                f"{x['latency_ms']:.2f}",
                f"{x['network_latency_ms']:.2f}" if "network_latency_ms" in x else "–",
                f"{paper[0]:,} / {paper[2]:,}" if paper else "–",
            ]
        )
    for r in sorted(
        (r for r in records if r["info"].get("tool") == "evaluate" and r.get("json")),
        key=lambda r: r["run_id"],
    ):
        gcnns = [x for x in r["json"] if x.get("family") == "gcnn"]
        lstms = [x for x in r["json"] if x.get("family") == "lstm"]
        for g in gcnns:
            for lstm in lstms:
                ratio = g["responsiveness"] / lstm["responsiveness"]
                claims.append(
                    f"- {g['model']} vs {lstm['model']} ({r['info']['precision']}, one thread; "
                    f"{load_brief(r)}): responsiveness {ratio:.1f}×, throughput "
                    f"{g['throughput'] / lstm['throughput']:.1f}× (medians): the GCNN is "
                    f"{'more' if ratio > 1 else 'less'} responsive on this CPU."
                )
    if rows:
        length = "/".join(str(n) for n in sorted(lengths, key=str))
        lines += [
            f"`evaluate.py latency` (tokens/s, median (interquartile range) over the repeats; "
            f"latency of one {length}-token sentence, batch 1; paper: Table 4's CPU throughput / "
            "GPU responsiveness):",
            "",
        ]
        header = ["model", "precision", "params", "throughput", "responsiveness"]
        header += ["latency (ms)", "network alone (ms)", "paper"]
        lines += table(header, rows)
        lines += [""] + claims + [""]
    bench = None
    for r in sorted(
        (r for r in records if r["info"].get("tool") == "roofline"), key=lambda r: r["run_id"]
    ):
        bench = bench or roofline()
        lines += roofline_lines(bench, r)
    return lines + image("latency", plots)


def roofline_lines(bench, record: dict) -> list[str]:
    """A bench_roofline.py record: its table, each row checked (a measured time below its bound
    means the record's peaks were too low: flagged, and no ceiling stated from it)."""
    out = record["stdout"].strip().splitlines()
    rows = bench.parse_rows(record["stdout"])
    lines = [f"`{record['command']}` ({load_brief(record)}):", "", out[0], ""]
    lines += [bench.HEADER, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    table_rows = [line for line in out if line.startswith("| ") and line != bench.HEADER]
    for row, line in zip(rows, table_rows, strict=True):
        cells = line.strip().strip("|").split("|")
        cells[-1] = f" {bench.of_bound(row)} "
        lines.append("|" + "|".join(cells) + "|")
    lines += [""] + bench.pair_lines(rows) + [""]
    broken = [row.name for row in rows if not row.valid]
    if broken:
        lines += [
            f"**Flagged:** {', '.join(broken)} measured below the bound this record computed: "
            "its peaks (a large GEMM's rate alone, before issue 17) were underestimated, so its "
            "bounds are not bounds and no ceiling is drawn from it. Re-measure with the current "
            "`benchmarks/bench_roofline.py` (the best of large GEMMs and the models' own shapes).",
            "",
        ]
    return lines


def plot(records: list[dict], path: Path) -> None:
    """Throughput and responsiveness, medians with interquartile bars, the paper's CPU
    throughput (Table 4) beside the models it has."""
    plt = pyplot()
    entries = evaluated(records)
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(entries)), 4.8))
    for offset, key, label in (
        (-0.27, "throughput", "throughput (best batch)"),
        (0.0, "responsiveness", "responsiveness (batch 1)"),
    ):
        values = [x[key] for _, x in entries]
        spans = [x.get(f"{key}_iqr") or (x[key], x[key]) for _, x in entries]
        err = [
            [v - lo for v, (lo, _) in zip(values, spans, strict=True)],
            [hi - v for v, (_, hi) in zip(values, spans, strict=True)],
        ]
        ax.bar(
            [i + offset for i in range(len(entries))],
            values,
            width=0.27,
            yerr=err,
            capsize=3,
            label=label,
        )
    paper = [(i, PAPER[x["model"]][0]) for i, (_, x) in enumerate(entries) if x["model"] in PAPER]
    if paper:
        ax.bar(
            [i + 0.27 for i, _ in paper],
            [v for _, v in paper],
            width=0.27,
            color="grey",
            hatch="//",
            label="paper: CPU throughput (Table 4, GBW)",
        )
    names = [f"{x['model']}\n{r['info']['precision']}" for r, x in entries]
    ax.set_xticks(list(range(len(entries))), names, fontsize=8)
    ax.set_yscale("log")
    finish(
        ax,
        "",
        "tokens / s (median; bars: interquartile range)",
        f"Scoring speed on this CPU (one thread; {load_text(records)})",
    )
    save(fig, path)
