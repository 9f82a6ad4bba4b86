"""The latency table's outputs: a markdown table like the paper's Table 4, JSON records, a plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gcnn.evaluation.latency import LatencyResult
from gcnn.plotting import pyplot


def markdown_table(results: Sequence[LatencyResult]) -> str:
    """A table in the spirit of the paper's Table 4, then the GCNN/LSTM responsiveness ratios."""
    if not results:
        return ""
    r0 = results[0]
    precisions = ", ".join(dict.fromkeys(f"{r.model} {r.precision}" for r in results))
    tf32 = " (TF32 off for every model)" if r0.device.startswith("cuda") else ""
    lines = [
        f"Scoring {r0.sentence_length}-token sentences on {r0.device}, {precisions}{tf32}, "
        f"{r0.threads} thread(s); median (interquartile range) over repeats after warm-up"
        + (f"; load average {r0.load_average:.1f}." if r0.load_average is not None else "."),
        "",
        "| Model | Params | Throughput (tok/s) | Responsiveness (tok/s) | Latency (ms) "
        "| of which network (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.model} | {r.params / 1e6:.1f}M "
            f"| {r.throughput:,.0f} (B={r.throughput_batch_size}; "
            f"{r.throughput_iqr[0]:,.0f}–{r.throughput_iqr[1]:,.0f}) "
            f"| {r.responsiveness:,.0f} ({r.responsiveness_iqr[0]:,.0f}–"
            f"{r.responsiveness_iqr[1]:,.0f}) "
            f"| {r.latency_ms:.2f} ({r.latency_iqr_ms[0]:.2f}–{r.latency_iqr_ms[1]:.2f}) "
            f"| {r.network_latency_ms:.2f} |"
        )
    gcnns = [r for r in results if r.family == "gcnn"]
    lstms = [r for r in results if r.family == "lstm"]
    if gcnns and lstms:
        lines.append("")
        for g in gcnns:
            for lstm in lstms:
                lines.append(
                    f"GCNN/LSTM: {g.model} vs {lstm.model}: responsiveness "
                    f"{g.responsiveness / lstm.responsiveness:.1f}x, throughput "
                    f"{g.throughput / lstm.throughput:.1f}x, network alone (no softmax) "
                    f"{lstm.network_latency_ms / g.network_latency_ms:.1f}x"
                )
    return "\n".join(lines)


def json_records(results: Sequence[LatencyResult]) -> list[dict]:
    """The --json output: the documented keys first, then details."""
    records = []
    for r in results:
        rec = {
            "model": r.model,
            "params": r.params,
            "throughput": r.throughput,
            "responsiveness": r.responsiveness,
            "latency_ms": r.latency_ms,
        }
        rec.update({k: v for k, v in r.to_json().items() if k not in rec})
        records.append(rec)
    return records


def plot_latency(results: Sequence[LatencyResult], path: str | Path) -> None:
    """Latency against sentence length, one line per model (needs matplotlib)."""
    plt = pyplot(f"--plot {path}")
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        lengths = sorted(r.latency_by_length)
        ax.plot(lengths, [r.latency_by_length[n] for n in lengths], marker="o", label=r.model)
    ax.set_xlabel("sentence length (tokens)")
    ax.set_ylabel("latency to score one sentence (ms)")
    ax.set_title(f"batch 1, {results[0].device}, {results[0].precision}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from gcnn.data import atomic_write
    from gcnn.errors import writing

    with writing(path, "plot"), atomic_write(path, mode="wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
