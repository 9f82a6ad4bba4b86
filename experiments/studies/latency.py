"""Study 5, latency (paper Table 4): its commands, its section of the page, its plot."""

from __future__ import annotations

from pathlib import Path

from page import RUN, image, machines, no_records, table
from plots import finish, pyplot, save
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
        f"- Machine: {machines(records)}.",
        "",
    ]
    rows, claims, lengths = [], [], set()
    for r in sorted(
        (r for r in records if r["info"].get("tool") == "evaluate" and r.get("json")),
        key=lambda r: r["run_id"],
    ):
        results = r["json"]
        for x in results:
            lengths.add(x.get("sentence_length"))
            rows.append(
                [
                    x["model"],
                    x.get("precision", r["info"]["precision"]),
                    f"{x['params'] / 1e6:.1f}M",
                    f"{x['throughput']:,.0f}",
                    f"{x['responsiveness']:,.0f}",
                    f"{x['latency_ms']:.2f}",
                    f"{x['network_latency_ms']:.2f}" if "network_latency_ms" in x else "–",
                ]
            )
        gcnns = [x for x in results if x.get("family") == "gcnn"]
        lstms = [x for x in results if x.get("family") == "lstm"]
        for g in gcnns:
            for lstm in lstms:
                ratio = g["responsiveness"] / lstm["responsiveness"]
                claims.append(
                    f"- {g['model']} vs {lstm['model']} ({r['info']['precision']}, one thread, "
                    "load average "
                    f"{g.get('load_average') or 0:.1f}): responsiveness {ratio:.1f}×, throughput "
                    f"{g['throughput'] / lstm['throughput']:.1f}×: the GCNN is "
                    f"{'more' if ratio > 1 else 'less'} responsive on this CPU."
                )
    if rows:
        length = "/".join(str(n) for n in sorted(lengths, key=str))
        lines += [
            f"`evaluate.py latency` (tokens/s; latency of one {length}-token sentence, batch 1):",
            "",
        ]
        lines += table(
            [
                "model",
                "precision",
                "params",
                "throughput",
                "responsiveness",
                "latency (ms)",
                "network alone (ms)",
            ],
            rows,
        )
        lines += [""] + claims + [""]
    for r in sorted(
        (r for r in records if r["info"].get("tool") == "roofline"), key=lambda r: r["run_id"]
    ):
        lines += [
            f"`{r['command']}`:",
            "",
            *[line for line in r["stdout"].strip().splitlines()],
            "",
        ]
    return lines + image("latency", plots)


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    entries = []
    for r in sorted(
        (r for r in records if r["info"].get("tool") == "evaluate" and r.get("json")),
        key=lambda r: r["run_id"],
    ):
        for x in r["json"]:
            entries.append(
                (f"{x['model']}\n{r['info']['precision']}", x["throughput"], x["responsiveness"])
            )
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(entries)), 4.2))
    positions = range(len(entries))
    ax.bar(
        [p - 0.2 for p in positions],
        [e[1] for e in entries],
        width=0.4,
        label="throughput (best batch)",
    )
    ax.bar(
        [p + 0.2 for p in positions],
        [e[2] for e in entries],
        width=0.4,
        label="responsiveness (batch 1)",
    )
    ax.set_xticks(list(positions), [e[0] for e in entries], fontsize=8)
    ax.set_yscale("log")
    finish(ax, "", "tokens / s", "Scoring speed on this CPU (one thread)")
    save(fig, path)
