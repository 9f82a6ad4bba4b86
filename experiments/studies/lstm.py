"""Study 4, GCNN against LSTM (paper Tables 2-3, Fig. 2): its runs, section and plot."""

from __future__ import annotations

import math
from pathlib import Path

from page import RUN, edge_warning, image, no_records, params, section_head, table
from plots import band, finish, pyplot, save, seeds_text, valid_label
from records import test_ppl, valid_ppl
from runner import Run, Runner
from stats import Arm, arm, best_lr, cell, interp_log, mean, verdict
from study import (
    StudyOptions,
    budget_args,
    chosen_lr,
    count_params,
    for_family,
    lr_name,
    model_args,
    model_flags,
    runs_for_seeds,
    selected,
    solve_increasing,
    vocab_size,
)

from gcnn.errors import GcnnError

NAME = "lstm"
UPDATES = 300


def matched_lstm_hidden(o: StudyOptions, lstm_overrides: dict, plan: bool) -> tuple:
    """(hidden size, LSTM params, GCNN params): the LSTM hidden size with the GCNN's count.

    Needs the corpus' vocabulary; when only planning and the corpus is not there yet (it is
    downloaded by the first run), the hidden size is left to be solved then."""
    try:
        vocab = vocab_size(o, download=not plan)
    except GcnnError:
        if not plan:
            raise
        return "<matched>", None, None
    gcnn_overrides = model_args(o.extra)
    target = count_params(o.model, vocab, **gcnn_overrides)
    params = lambda h: count_params(o.lstm_model, vocab, **{**lstm_overrides, "hidden_size": h})  # noqa: E731
    best = solve_increasing(params, target)
    return best, params(best), target


def runs(runner: Runner, o: StudyOptions) -> None:
    """gcnn-small and an LSTM of the same parameter count (its hidden size solved for), same
    corpus, tokens per update and number of updates; each family at its best lr of a sweep."""
    budget = budget_args(o, UPDATES)
    lstm_extra = for_family(o.extra, "lstm")
    lstm_overrides = model_args(lstm_extra)
    hidden, lstm_params, gcnn_params = matched_lstm_hidden(o, lstm_overrides, runner.plan)
    families = {
        "gcnn": [*model_flags(o, o.model), *budget, *o.extra],
        "lstm": [
            *model_flags(o, o.lstm_model),
            *budget,
            *lstm_extra,
            "--model-arg",
            f"hidden_size={hidden}",
        ],
    }
    info = {"gcnn_params": gcnn_params, "lstm_params": lstm_params, "lstm_hidden": hidden}
    sweeps = {}
    for family, args in families.items():
        sweep = [
            Run(
                "lstm",
                f"{family}-{lr_name(lr)}",
                1,
                [*args, "--lr", f"{lr:g}"],
                label=family,
                info={**info, "family": family, "lr": lr},
            )
            for lr in o.lrs
        ]
        sweeps[family] = chosen_lr(runner, o, sweep, o.lrs)
    runs = []
    for family, args in families.items():
        lr = sweeps[family] or o.lrs[0]
        extra_info = {"family": family, "lr": lr, "placeholder": sweeps[family] is None}
        runs += runs_for_seeds(
            o,
            "lstm",
            f"{family}-{lr_name(lr)}",
            [*args, "--lr", f"{lr:g}"],
            label=family,
            info={**info, **extra_info},
        )
    runner.run(selected(o, runs))


# --- the page ---------------------------------------------------------------------------------


def lstm_choice(records: list[dict]) -> dict[str, float]:
    """{family: lr} with the best exact validation perplexity among the seed-1 sweep runs."""
    best = {}
    for family in ("gcnn", "lstm"):
        sweep = [r for r in records if r["info"]["family"] == family and r["seed"] == 1]
        if sweep:
            best[family] = best_lr(sweep)
    return best


def lstm_main(records: list[dict]) -> dict[str, list[dict]]:
    best = lstm_choice(records)
    return {
        f: [r for r in records if r["info"]["family"] == f and r["info"]["lr"] == lr]
        for f, lr in best.items()
    }


def at_common(main: dict[str, list[dict]], key: str) -> tuple[float, dict[str, dict[int, float]]]:
    """The largest x every run reached, and each run's (interpolated) valid ppl there."""
    ends = [r["curve"][-1][key] for rs in main.values() for r in rs if r.get("curve")]
    if not ends:
        return math.nan, {}
    x = min(ends)
    return x, {
        f: {
            r["seed"]: interp_log(
                x, [p[key] for p in r["curve"]], [p["valid_ppl"] for p in r["curve"]]
            )
            for r in rs
            if r.get("curve")
        }
        for f, rs in main.items()
    }


def section(records: list[dict], plots: dict) -> list[str]:
    title = "4. GCNN against LSTM (paper Tables 2–3, Fig. 2)"
    if not records:
        return no_records(title, f"{RUN} lstm")
    lines = section_head(
        title,
        "GCNNs beat LSTMs of comparable size: WikiText-103 test perplexity LSTM-1024 48.7, "
        "GCNN-8 44.9, GCNN-14 37.2 (Table 2); Google Billion Word LSTM-2048 43.9 vs GCNN-13 38.1 "
        "(Table 3); and they get there with less computation.",
        records,
        f"{RUN} lstm",
        f"{RUN} lstm --data wikitext-103 --model gcnn-8 --lstm-model lstm-1024 --max-epochs 35 "
        "--lrs 0.5,1,2 --records experiments/records/wt103",
    )
    best = lstm_choice(records)
    sweep = sorted(
        (r for r in records if r["seed"] == 1), key=lambda r: (r["info"]["family"], r["info"]["lr"])
    )
    rows = [
        [
            r["info"]["family"],
            f"{r['info']['lr']:g}",
            r["status"],
            cell([r], valid_ppl),
            "chosen" if best.get(r["info"]["family"]) == r["info"]["lr"] else "",
        ]
        for r in sweep
    ]
    lines += [
        "Learning-rate sweep (seed 1, the same budget; chosen by exact validation perplexity):",
        "",
    ]
    lines += table(["family", "lr", "status", "valid ppl", ""], rows) + [""]
    for family, lr in best.items():
        swept = [r["info"]["lr"] for r in sweep if r["info"]["family"] == family]
        lines += edge_warning(family.upper(), lr, swept)
    lines += [""] if lines[-1] else []
    main = lstm_main(records)
    rows = []
    for family, rs in main.items():
        ok = [r for r in rs if r.get("done")]
        if not ok:
            continue
        flops = ok[0]["flops_per_token"]
        rows.append(
            [
                f"{ok[0]['model']['name']} ({family}, lr {best[family]:g})",
                params(ok),
                f"{flops['train'] / 1e6:.1f}",
                f"{mean([r['done']['train_s'] for r in ok]) / 60:.1f}",
                f"{mean([r['curve'][-1]['train_flops'] for r in ok if r.get('curve')]) / 1e15:.3f}",
                cell(ok, valid_ppl),
                cell(ok, test_ppl),
            ]
        )
    lines += table(
        [
            "model",
            "params",
            "train MFLOP / token",
            "train time (min)",
            "train PFLOP",
            "valid ppl",
            "test ppl",
        ],
        rows,
    )
    lines += [
        "",
        "Training FLOPs = 3 × forward FLOPs per scored token × tokens; forward = the network "
        "(a GCNN's over its block plus the unscored context) + the adaptive-softmax head + each "
        "tail weighted by how often training targets fall in it (2 × multiply-adds; "
        "`experiments/measure.py: flops_per_token`). Training time excludes validations. "
        "Perplexities: mean [95% interval of the mean] over seeds.",
        "",
    ]
    if "gcnn" in main and "lstm" in main:
        g, lstm = arm("GCNN", main["gcnn"]), arm("LSTM", main["lstm"])
        lines.append(f"- Equal updates and tokens: {verdict(g, lstm)}")
        for key, unit, scale in (
            ("train_s", "min of training", 60),
            ("train_flops", "PFLOP", 1e15),
        ):
            x, ppl = at_common(main, key)
            if ppl.get("gcnn") and ppl.get("lstm"):
                a, b = Arm("GCNN", ppl["gcnn"]), Arm("LSTM", ppl["lstm"])
                lines.append(
                    f"- At equal compute ({x / scale:.3g} {unit}, validation subset, read off "
                    "the curves of the longer run, whose schedule had not ended there: "
                    f"indicative only; `{RUN} budget` measures it): {verdict(a, b)}"
                )
        lines.append("")
    return lines + image("lstm", plots)


AXES = (  # (record key, scale, label) of each panel's x axis
    ("tokens", 1e6, "training tokens (millions)"),
    ("train_s", 60, "training time (minutes, validations excluded)"),
    ("train_flops", 1e15, "training PFLOP"),
)


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    main = lstm_main(records)
    for i, (_, rs) in enumerate(sorted(main.items())):
        label = f"{rs[0]['model']['name']} (lr {rs[0]['info']['lr']:g})"
        for ax, (key, scale, _) in zip(axes, AXES, strict=True):
            band(ax, rs, key, f"C{i}", label, scale=scale)
    shown = [r for rs in main.values() for r in rs]
    for ax, (_, _, xlabel) in zip(axes, AXES, strict=True):
        finish(ax, xlabel, valid_label(shown), f"mean of {seeds_text(shown)}", log=True)
    save(fig, path)
