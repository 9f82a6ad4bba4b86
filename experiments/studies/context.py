"""Study 3, context size (paper Fig. 4): its runs, its section of the page, its plot."""

from __future__ import annotations

import math
from pathlib import Path

from page import RUN, group, image, no_records, params, plural, section_head, table
from plots import errorbars, finish, plain_ticks, pyplot, save, seeds_text
from records import test_ppl, valid_ppl
from runner import Runner
from stats import Arm, arm, cell, interval, verdict
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


def with_kernel(blocks: list[dict], kernel: int, keep_params: bool = True) -> list[dict]:
    """Every convolution wider than 1 gets `kernel`; with keep_params every width x sqrt(k_base /
    kernel) too, so the convolutions keep their parameter count (k x c_in x c_out) while the
    receptive field changes; without it the widths stay the preset's (equal width)."""
    k_base = max(k for b in blocks for k, _ in b["layers"])
    scale = math.sqrt(k_base / kernel) if keep_params else 1.0
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
    """(a) Models whose kernels (hence receptive fields) differ at equal convolution parameters,
    and the same kernels at the preset's width (equal width: more parameters for wider kernels);
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
    # the base kernel is the preset itself; a kernel of 1 sees no context at any width
    for kernel in sorted(set(o.kernels) - {k_base, 1}):
        blocks = with_kernel(base, kernel, keep_params=False)
        flags = [*args, "--model-arg", f"blocks={toml_blocks(blocks)}"]
        info = {"kernel": kernel, "receptive_field": receptive_field(blocks), "base": False}
        runs += runs_for_seeds(
            o,
            "context",
            f"k{kernel}-width",
            flags,
            label=f"kernel {kernel}, preset width",
            info={**info, "matched": "width"},
        )
    runner.run(selected(o, runs))


# --- the page ---------------------------------------------------------------------------------


def family(records: list[dict], matched: str) -> list[list[dict]]:
    """The trained models compared at equal `matched` ("params" or "width"), by receptive field;
    the preset itself (the base kernel) belongs to both."""
    groups = group(records).values()
    keep = [g for g in groups if g[0]["info"].get("matched", "params") == matched]
    if matched == "width":
        keep += [g for g in groups if g[0]["info"].get("base")]
    return sorted(keep, key=lambda g: g[0]["info"]["receptive_field"])


def trained(title: str, groups: list[list[dict]]) -> list[str]:
    rows = [
        [
            f"{g[0]['info']['kernel']}",
            f"{g[0]['info']['receptive_field']}",
            params(g),
            cell(g, valid_ppl),
            cell(g, test_ppl),
        ]
        for g in groups
    ]
    lines = [
        title,
        "",
        *table(["kernel", "receptive field", "params", "valid ppl", "test ppl"], rows),
    ]
    lines.append("")
    for small, large in zip(groups, groups[1:], strict=False):
        fs, fl = small[0]["info"]["receptive_field"], large[0]["info"]["receptive_field"]
        a, b = arm(f"field {fl}", large), arm(f"field {fs}", small)
        lines.append(f"- Receptive field {fl} vs {fs}: {verdict(a, b)}")
    return lines + [""]


def history_arms(base: list[dict]) -> dict[int, Arm]:
    """{k: test ppl by seed with the history cut to k tokens}."""
    histories = sorted({p["history"] for r in base for p in r["context_curve"]})
    return {
        h: Arm(
            f"k={h}",
            {
                r["seed"]: next(p["ppl"] for p in r["context_curve"] if p["history"] == h)
                for r in base
            },
        )
        for h in histories
    }


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
    lines += trained(
        "**(a) Models trained with different receptive fields** (same depth, widths scaled to "
        "keep the convolutions' parameters; mean [95% interval] over seeds):",
        family(records, "params"),
    )
    width = family(records, "width")
    if len(width) > 1:
        lines += trained(
            "**(a′) The same kernels at the preset's width** (equal width: a wider kernel has "
            "more parameters):",
            width,
        )
    base = [r for r in records if r.get("context_curve")]
    if base:
        tokens = base[0].get("context_tokens") or 0
        arms = history_arms(base)
        where = f"the first {tokens:,} test tokens" if tokens else "every test token"
        lines += [
            f"**(b) One model (the preset, {plural(len(base), 'seed')}) scored with its history "
            f"cut to k tokens** (exact: every token sees exactly k previous tokens; {where}; "
            "mean [95% interval]):",
            "",
        ]
        rows = [[str(h), cell_of(a)] for h, a in arms.items()]
        lines += table(["history k", "test ppl"], rows) + [""]
        ks = list(arms)
        lines += [
            "Each step of history, paired by seed (does the longer history score lower?):",
            "",
        ]
        for h0, h1 in zip(ks, ks[1:], strict=False):
            lines.append(f"- {h0} → {h1} tokens: {verdict(arms[h1], arms[h0])}")
        if len(ks) > 2:  # diminishing returns: the first step gains more than the last
            step_last = Arm("gain of the last step", gains(arms[ks[-2]], arms[ks[-1]]))
            first = f"gain of the first step ({ks[0]} → {ks[1]})"
            step_first = Arm(first, gains(arms[ks[0]], arms[ks[1]]))
            lines.append(f"- Returns fall off with context: {verdict(step_last, step_first)}")
        lines.append("")
    return lines + image("context", plots)


def gains(short: Arm, long: Arm) -> dict[int, float]:
    """By seed, how much lower the longer history scores."""
    return {s: short.values[s] - long.values[s] for s in short.values if s in long.values}


def cell_of(a: Arm) -> str:
    i = interval(list(a.values.values()))
    return f"{i.mean:.1f}" if i.n < 2 else f"{i.mean:.1f} [{i.low:.1f}, {i.high:.1f}]"


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4))
    for matched, color, marker in (
        ("params", "C0", "equal parameters"),
        ("width", "C2", "equal width"),
    ):
        groups = family(records, matched)
        if len(groups) > 1 or matched == "params":
            xs = [g[0]["info"]["receptive_field"] for g in groups]
            values = [[test_ppl(r) for r in g if test_ppl(r)] for g in groups]
            errorbars(axes[0], xs, values, color, label=marker)
    title = f"(a) trained with this field: mean of {seeds_text(records)}, bars min–max"
    finish(axes[0], "receptive field (tokens)", "test perplexity", title)
    base = [r for r in records if r.get("context_curve")]
    if base:
        arms = history_arms(base)
        errorbars(axes[1], list(arms), [list(a.values.values()) for a in arms.values()], "C1")
        axes[1].set_xscale("log", base=2)
        axes[1].xaxis.set_major_formatter(plain_ticks())
    tokens = f"first {base[0].get('context_tokens'):,} test tokens" if base else "test"
    title = f"(b) one model, history cut to k: mean of {seeds_text(base)}, bars min–max"
    finish(axes[1], "history k (tokens)", f"test perplexity ({tokens})", title, legend=False)
    save(fig, path)
