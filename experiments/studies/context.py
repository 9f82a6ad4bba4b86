"""Study 3, context size (paper Fig. 4): its runs, its section of the page, its plot."""

from __future__ import annotations

import math
from pathlib import Path

from page import RUN, group, image, no_records, params, plural, section_head, table
from plots import errorbars, finish, pyplot, save
from records import test_ppl, valid_ppl
from runner import Runner
from stats import by_seed, compare, mean, spread
from study import StudyOptions, model_args, runs_for_seeds, selected, training_args

from gcnn.errors import GcnnError

NAME = "context"
UPDATES = 200


def base_blocks(o: StudyOptions) -> list[dict]:
    from gcnn.models import PRESETS

    blocks = model_args(o.extra).get("blocks", PRESETS.get(o.model, {}).get("blocks"))
    if not blocks:
        raise GcnnError(f"--model {o.model}: the context study needs a GCNN preset")
    return [{"layers": b["layers"], "repeat": b.get("repeat", 1)} for b in blocks]


def with_kernel(blocks: list[dict], kernel: int) -> list[dict]:
    """Every convolution wider than 1 gets `kernel`, every width x sqrt(k_base / kernel): the
    convolutions keep their parameter count (k x c_in x c_out) and the receptive field changes."""
    k_base = max(k for b in blocks for k, _ in b["layers"])
    scale = math.sqrt(k_base / kernel)
    return [
        {
            "layers": [[kernel if k > 1 else 1, max(1, round(c * scale))] for k, c in b["layers"]],
            "repeat": b["repeat"],
        }
        for b in blocks
    ]


def receptive_field(blocks: list[dict]) -> int:
    return 1 + sum(b["repeat"] * sum(k - 1 for k, _ in b["layers"]) for b in blocks)


def toml_blocks(blocks: list[dict]) -> str:
    return (
        "[" + ", ".join(f"{{layers = {b['layers']}, repeat = {b['repeat']}}}" for b in blocks) + "]"
    )


def runs(runner: Runner, o: StudyOptions) -> None:
    """(a) Models whose kernels (hence receptive fields) differ at equal convolution parameters;
    the softmax input stays the preset's width. (b) The preset's own model evaluated on the test
    split with every token's history cut to 1, 2, 4, ... tokens (exactly: gcnn.evaluation)."""
    base = base_blocks(o)
    k_base = max(k for b in base for k, _ in b["layers"])
    width = base[-1]["layers"][-1][1]
    field_base = receptive_field(base)
    histories = [h for h in (2**i for i in range(12)) if h < field_base] + [field_base]
    args = training_args(o, o.model, UPDATES)
    runs = []
    for kernel in sorted(set(o.kernels) | {k_base}):
        blocks = with_kernel(base, kernel)
        flags = [
            *args,
            "--model-arg",
            f"blocks={toml_blocks(blocks)}",
            "--model-arg",
            f"softmax_dim={width}",
        ]
        is_base = kernel == k_base
        runs += runs_for_seeds(
            o,
            "context",
            f"k{kernel}",
            flags,
            label=f"kernel {kernel}",
            info={"kernel": kernel, "receptive_field": receptive_field(blocks), "base": is_base},
            contexts=tuple(h - 1 for h in histories) if is_base else (),
            context_tokens=o.context_tokens if is_base else 0,
        )
    runner.run(selected(o, runs))


# --- the page ---------------------------------------------------------------------------------


def section(records: list[dict], plots: dict) -> list[str]:
    title = "3. Context size (paper Fig. 4)"
    if not records:
        return no_records(title, f"{RUN} context")
    lines = section_head(
        title,
        "perplexity falls as the context grows, with quickly diminishing returns beyond ≈20 "
        "tokens; short contexts hurt WikiText-103 much more than Google Billion Word (Fig. 4).",
        records,
        f"{RUN} context",
        f"{RUN} context --data wikitext-103 --model gcnn-8 --max-epochs 35 "
        "--records experiments/records/wt103",
    )
    groups = sorted(group(records).values(), key=lambda g: g[0]["info"]["receptive_field"])
    rows = [
        [
            f"{g[0]['info']['kernel']}",
            f"{g[0]['info']['receptive_field']}",
            params(g),
            spread([valid_ppl(r) for r in g]),
            spread([test_ppl(r) for r in g]),
        ]
        for g in groups
    ]
    lines += [
        "**(a) Models trained with different receptive fields** (same depth, widths scaled to "
        "keep the convolutions' parameters):",
        "",
    ]
    lines += table(["kernel", "receptive field", "params", "valid ppl", "test ppl"], rows) + [""]
    for small, large in zip(groups, groups[1:], strict=False):
        fs, fl = small[0]["info"]["receptive_field"], large[0]["info"]["receptive_field"]
        lines.append(
            f"- Receptive field {fl} vs {fs}: "
            + compare(f"field {fl}", by_seed(large), f"field {fs}", by_seed(small))
        )
    lines.append("")
    base = [r for r in records if r.get("context_curve")]
    if base:
        tokens = base[0].get("context_tokens") or 0
        histories = sorted({p["history"] for r in base for p in r["context_curve"]})
        per = {
            h: [next(p["ppl"] for p in r["context_curve"] if p["history"] == h) for r in base]
            for h in histories
        }
        where = f"the first {tokens:,} test tokens" if tokens else "every test token"
        lines += [
            f"**(b) One model (the preset, {plural(len(base), 'seed')}) scored with its history "
            f"cut to k tokens** (exact: every token sees exactly k previous tokens; {where}):",
            "",
        ]
        lines += table(["history k", "test ppl"], [[str(h), spread(per[h])] for h in histories]) + [
            ""
        ]
        steps = []
        for h0, h1 in zip(histories, histories[1:], strict=False):
            gain = mean(per[h0]) - mean(per[h1])
            steps.append(f"{h0}→{h1}: −{gain:.1f}" if gain >= 0 else f"{h0}→{h1}: +{-gain:.1f}")
        if steps:
            first = mean(per[histories[0]]) - mean(per[histories[1]]) if len(histories) > 1 else 0
            last = mean(per[histories[-2]]) - mean(per[histories[-1]]) if len(histories) > 1 else 0
            verdict = (
                "returns fall off with context, as in the paper"
                if first > last
                else "returns do not fall off here"
            )
            monotone = all(
                mean(per[a]) > mean(per[b]) for a, b in zip(histories, histories[1:], strict=False)
            )
            helps = "every extra token of history helps" if monotone else "not every step helps"
            lines.append(
                f"- Perplexity change per step of history (mean over seeds): {', '.join(steps)} "
                f"ppl; {helps}, and {verdict}."
            )
            lines.append("")
    return lines + image("context", plots)


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = sorted(group(records).values(), key=lambda g: g[0]["info"]["receptive_field"])
    xs = [g[0]["info"]["receptive_field"] for g in groups]
    errorbars(axes[0], xs, [[test_ppl(r) for r in g] for g in groups], "C0")
    finish(
        axes[0],
        "receptive field (tokens)",
        "test perplexity",
        "(a) trained with this receptive field",
        legend=False,
    )
    base = [r for r in records if r.get("context_curve")]
    if base:
        histories = sorted({p["history"] for r in base for p in r["context_curve"]})
        values = [
            [next(p["ppl"] for p in r["context_curve"] if p["history"] == h) for r in base]
            for h in histories
        ]
        errorbars(axes[1], histories, values, "C1")
        axes[1].set_xscale("log", base=2)
    finish(
        axes[1],
        "history k (tokens)",
        "test perplexity (subset)",
        "(b) one model, history cut to k",
        legend=False,
    )
    save(fig, path)
