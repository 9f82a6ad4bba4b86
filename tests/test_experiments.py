"""experiments/: every study end to end at toy scale, resuming, and the results page built from
its records; plus the truncated-history evaluation (`context=`) the context study relies on."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gcnn.evaluation.perplexity import corpus_nll
from gcnn.models import build_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))


# --- perplexity with a truncated history ------------------------------------------------------


def phrase_stream(n: int, seed: int = 0) -> np.ndarray:
    """Ids 1..8 in phrases whose next word depends on the last 3: history pays off."""
    phrases = [[1, 2, 3, 4, 5], [1, 2, 6, 4, 7], [8, 2, 3, 4, 6], [8, 2, 6, 4, 3]]
    rng = random.Random(seed)
    out: list[int] = []
    while len(out) < n:
        out += rng.choice(phrases) + [0]
    return np.asarray(out[:n], dtype=np.int32)


@pytest.fixture(scope="module")
def trained_tiny_gcnn():
    torch.manual_seed(0)
    tiny = {"embed_dim": 16, "blocks": [{"layers": [[3, 16]], "repeat": 3}], "cutoffs": []}
    model = build_model("gcnn-small", 9, dropout=0.0, **tiny)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    train = torch.from_numpy(phrase_stream(4000, seed=1).astype(np.int64))
    for step in range(60):
        starts = [(step * 37 + 500 * row) % (len(train) - 65) for row in range(4)]
        chunk = torch.stack([train[s : s + 65] for s in starts])
        loss, count, _ = model.loss(chunk[:, :-1], chunk[:, 1:])
        optimizer.zero_grad()
        (loss / count).backward()
        optimizer.step()
    return model.eval()


def test_context_full_equals_default_and_shorter_histories_score_worse(trained_tiny_gcnn):
    model = trained_tiny_gcnn
    tokens = phrase_stream(600, seed=2)
    full = model.receptive_field - 1
    assert full == 6
    default, count = corpus_nll(model, tokens, 0, block_size=50, batch_size=3)
    assert count == len(tokens)
    same, _ = corpus_nll(model, tokens, 0, block_size=50, batch_size=3, context=full)
    more, _ = corpus_nll(model, tokens, 0, block_size=7, batch_size=2, context=full + 10)
    assert same == default and more == pytest.approx(default, rel=1e-6)
    losses = []
    for context in (0, 1, 3):
        nll, n = corpus_nll(model, tokens, 0, block_size=50, batch_size=3, context=context)
        assert n == len(tokens)
        losses.append(nll)
    assert losses[0] > losses[1] > losses[2] > default  # each word of history helps here


def test_context_cuts_history_exactly(trained_tiny_gcnn):
    """A token scored with context c sees exactly the previous c + 1 inputs, nothing more."""
    model = trained_tiny_gcnn
    tokens = phrase_stream(40, seed=3)
    nll, _ = corpus_nll(model, tokens, 0, context=2, block_size=4, batch_size=2)
    x = np.concatenate([[0], tokens[:-1]])  # the input aligned with each target
    expected = 0.0
    with torch.inference_mode():
        for j in range(len(tokens)):
            window = torch.from_numpy(x[max(0, j - 2) : j + 1].astype(np.int64))[None]
            target = torch.full_like(window, -100)
            target[0, -1] = int(tokens[j])
            expected -= float(model.token_log_probs(window, target).sum())
    assert nll == pytest.approx(expected, rel=1e-5)


# --- the studies, end to end at toy scale -----------------------------------------------------

TINY = [
    "--model-arg", "embed_dim=16",
    "--model-arg", "blocks=[{layers=[[3, 16]], repeat=2}]",
    "--model-arg", "cutoffs=[20]",
    "--block-size", "16", "--tokens-per-batch", "64", "--warmup-updates", "2",
    "--device", "cpu", "--precision", "fp32",
]  # fmt: skip


def study_argv(corpus: Path, root: Path, *studies: str, updates: int = 4) -> list[str]:
    return [
        *studies, "--in-process", "--data", str(corpus), "--seeds", "2",
        "--max-updates", str(updates), "--valid-points", "2",
        "--records", str(root / "records"), "--runs", str(root / "runs"),
        "--nag-lrs", "0.5,2", "--lrs", "0.01,0.03", "--kernels", "1,3", "--context-tokens", "60",
        "--latency-models", "gcnn-small,lstm-small", "--precisions", "fp32", "--repeats", "2",
        "--latency-args", "--vocab-size 50 --sentence-length 4",
        "--", *TINY,
    ]  # fmt: skip


def records_of(root: Path, study: str) -> dict[str, dict]:
    return {
        p.stem: json.loads(p.read_text()) for p in sorted((root / "records" / study).glob("*.json"))
    }


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Every study once, reduced: 2 seeds, 4 updates of a tiny model on a tiny corpus."""
    import run
    from conftest import write_synthetic_corpus

    root = tmp_path_factory.mktemp("studies")
    corpus = write_synthetic_corpus(root / "tiny")
    torch.set_num_threads(1)
    assert run.main(study_argv(corpus, root, "all", "default", "long")) == 0
    return corpus, root


def test_every_study_writes_one_record_per_run(studies):
    _, root = studies
    gating = records_of(root, "gating")
    variants = ["glu", "gtu", "bilinear", "relu", "tanh", "linear"]
    variants += ["relu-unmatched", "tanh-unmatched", "linear-unmatched"]
    main = sorted(k for k, r in gating.items() if "lr" not in r["info"])  # train.py's lr
    assert main == sorted(f"{v}-s{s}" for v in variants for s in (1, 2))
    # each matched variant's own lr: a sweep beside train.py's, seeds at the lr it chose
    for v in variants[:6]:
        assert gating[f"{v}-lr0.02-s1"]["config"]["lr"] == 0.02
    long = {k: r for k, r in gating.items() if r["info"].get("long")}
    assert {r["info"]["gating"] for r in long.values()} >= {"glu"} and len(long) == 4
    glu, relu, unmatched = gating["glu-s1"], gating["relu-s1"], gating["relu-unmatched-s1"]
    assert glu["status"] == "ok" and glu["seed"] == 1 and glu["budget"]["max_updates"] == 4
    assert glu["done"]["updates"] == 4 and glu["done"]["tokens"] > 0
    assert [p["update"] for p in glu["curve"]] == [2, 4]  # --valid-points 2
    assert glu["curve"][0]["train_s"] <= glu["curve"][1]["train_s"]
    assert glu["curve"][1]["train_flops"] == glu["done"]["tokens"] * glu["flops_per_token"]["train"]
    assert glu["eval"]["test"]["tokens"] > 0 and glu["eval"]["valid"]["ppl"] > 1
    assert glu["machine"]["cpu"] and glu["machine"]["torch"] == torch.__version__
    assert glu["config"]["gating"] == "glu" and glu["config"]["seed"] == 1
    # ungated: matched parameters by default, the control at the preset's width has fewer
    assert abs(relu["model"]["params"] - glu["model"]["params"]) < 0.1 * glu["model"]["params"]
    assert unmatched["model"]["params"] < relu["model"]["params"]
    assert not (root / "runs" / "gating" / "glu-s1").exists()  # checkpoints go once recorded

    norm = records_of(root, "norm")
    assert {r["info"]["optimizer"] for r in norm.values()} == {"nag", "adamw"}
    # each optimizer at its own weight decay: NAG's, and AdamW's of the study recipe
    decay = {"nag": 5e-6, "adamw": 0.01}
    assert all(r["config"]["weight_decay"] == decay[r["info"]["optimizer"]] for r in norm.values())
    sweep = [
        r
        for r in norm.values()
        if r["info"].get("variant") == "both" and r["info"]["optimizer"] == "nag"
    ]
    assert {r["info"]["lr"] for r in sweep} >= {0.5, 2.0}
    lr = next(
        r["info"]["lr"]
        for r in norm.values()
        if r["info"]["variant"] == "neither" and r["info"]["optimizer"] == "nag"
    )
    assert (
        len([r for r in norm.values() if r["info"]["optimizer"] == "nag" and r["info"]["lr"] == lr])
        == 8
    )
    unclipped = [r for r in norm.values() if r["info"].get("sweep") == "unclipped"]
    assert {r["info"]["lr"] for r in unclipped} >= {0.01, 0.03, 0.1, 0.3}
    assert all(r["config"]["clip_norm"] == 0 for r in unclipped)
    assert norm["adamw-neither-s2"]["config"]["clip_norm"] == 0
    assert norm["adamw-neither-s2"]["model"]["config"]["weight_norm"] is False

    context = records_of(root, "context")
    assert sorted(context) == ["k1-s1", "k1-s2", "k3-s1", "k3-s2"]
    assert context["k1-s1"]["model"]["receptive_field"] == 1
    assert context["k3-s1"]["model"]["receptive_field"] == 5
    # receptive fields compared at equal convolution sizes: kernel x width^2 kept
    sizes = [
        k * c * c for r in context.values() for k, c in r["model"]["config"]["blocks"][0]["layers"]
    ]
    assert max(sizes) < 1.05 * min(sizes)
    curve = context["k3-s1"]["context_curve"]
    assert [p["history"] for p in curve] == [1, 2, 4, 5]  # ... up to the receptive field
    assert "context_curve" not in context["k1-s1"]

    lstm = records_of(root, "lstm")
    families = {r["info"]["family"] for r in lstm.values()}
    assert families == {"gcnn", "lstm"} and len(lstm) == 2 * 2 + 2  # 2 lrs, + 2nd seed of best
    info = next(iter(lstm.values()))["info"]
    assert abs(info["lstm_params"] - info["gcnn_params"]) < 0.05 * info["gcnn_params"]
    lstm_run = next(r for r in lstm.values() if r["info"]["family"] == "lstm")
    assert lstm_run["model"]["params"] == info["lstm_params"]
    assert lstm_run["flops_per_token"]["network"] > 0

    latency = records_of(root, "latency")
    assert sorted(latency) == [
        "evaluate-gcnn-small-lstm-small-fp32",
        "roofline-gcnn-small-lstm-small-fp32",
    ]
    assert [x["model"] for x in latency["evaluate-gcnn-small-lstm-small-fp32"]["json"]] == [
        "gcnn-small",
        "lstm-small",
    ]
    assert "measured peaks" in latency["roofline-gcnn-small-lstm-small-fp32"]["stdout"]

    default, long = records_of(root, "default"), records_of(root, "long")
    assert sorted(default) == [f"{v}-s{s}" for v in ("gcnn-8-small", "lstm-small") for s in (1, 2)]
    assert default["gcnn-8-small-s1"]["done"]["process_s"] > 0
    assert sorted(long) == sorted(
        f"{v}-s{s}" for v in ("gcnn", "lstm", "lstm-dropout0.3") for s in (1, 2)
    )
    assert long["gcnn-s1"]["config"]["model_args"]["embed_dim"] == 16  # flags over the recipe
    assert long["gcnn-s1"]["config"]["dropout"] == 0.35  # ... the rest from the recipe


def test_rerun_skips_finished_runs_and_resumes_interrupted_ones(studies, capsys):
    import run

    corpus, root = studies
    before = {p: p.stat().st_mtime_ns for p in (root / "records").rglob("*.json")}
    assert run.main(study_argv(corpus, root, "gating", "norm", "lstm")) == 0
    assert capsys.readouterr().out.count(" recorded, 0 to do") == 3
    assert {p: p.stat().st_mtime_ns for p in (root / "records").rglob("*.json")} == before

    # a run stopped before its record: its checkpoint is there, re-running resumes it
    record = root / "records" / "gating" / "tanh-s2.json"
    old = records_of(root, "gating")["tanh-s2"]
    argv = study_argv(corpus, root, "gating")
    record.unlink()
    assert run.main([*argv[:1], "--only", "tanh", "--keep-runs", *argv[1:]]) == 0
    new = records_of(root, "gating")["tanh-s2"]
    assert new["resumed"] is False  # no checkpoint was kept the first time: trained again
    assert new["eval"]["test"]["ppl"] == pytest.approx(old["eval"]["test"]["ppl"], rel=1e-6)
    record.unlink()
    assert run.main([*argv[:1], "--only", "tanh", *argv[1:]]) == 0
    resumed = records_of(root, "gating")["tanh-s2"]
    assert resumed["resumed"] is True and resumed["done"]["updates"] == 4
    assert resumed["eval"]["test"]["ppl"] == pytest.approx(old["eval"]["test"]["ppl"], rel=1e-6)


def test_changed_settings_are_refused_not_mixed(studies, capsys):
    from run import main

    from gcnn.errors import run_cli

    corpus, root = studies
    argv = study_argv(corpus, root, "gating", updates=5)
    assert run_cli(lambda: main(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: record ") and "--records" in err and err.count("\n") == 1

    # what train.py resolves counts too (a changed default or recipe file), not just the flags;
    # settings the record predates do not
    path = root / "records" / "gating" / "glu-s1.json"
    original = path.read_text()
    record = json.loads(original)
    try:
        record["spec"]["config"]["weight_decay"] = 0.5
        path.write_text(json.dumps(record))
        assert run_cli(lambda: main(study_argv(corpus, root, "gating"))) == 2
        assert "weight_decay: recorded 0.5, now 0.01" in capsys.readouterr().err
        del record["spec"]["config"]["weight_decay"]
        path.write_text(json.dumps(record))
        assert main(study_argv(corpus, root, "gating", "--only", "glu")) == 0
        assert " recorded, 0 to do" in capsys.readouterr().out
    finally:
        path.write_text(original)


def test_studies_keep_the_recipe_their_records_were_made_with():
    """A new default run's recipe neither changes a study's runs nor orphans its records: the
    study states the old recipe, and a flag that spells out a recorded value is the same run."""
    from measure import train_config
    from runner import Run, spec_diff
    from study import StudyOptions, training_args

    args = training_args(StudyOptions(), "gcnn-small", 200)
    c = train_config([*args, "--seed", "1"])
    assert (c.tokens_per_batch, c.lr, c.dropout, c.weight_decay) == (4096, 1e-2, 0.2, 0.01)
    assert train_config(training_args(StudyOptions(), "lstm-small", 200)).tokens_per_batch == 4096

    wanted = Run("s", "v", 1, args).spec()
    recorded = json.loads(json.dumps(wanted))  # as a record made before the recipe moved
    recorded["args"] = ["--data", "wikitext-2", "--model", "gcnn-small", "--max-updates", "200"]
    recorded["config"]["dropout"] = None  # then left to the preset (0.2)
    assert spec_diff(recorded, wanted) == ""
    recorded["config"]["dropout"] = 0.1
    assert spec_diff(recorded, wanted) == "dropout: recorded 0.1, now 0.2"


def test_dry_run_lists_runs_and_estimates_without_running(tmp_path, capsys):
    import run
    from conftest import write_synthetic_corpus

    corpus = write_synthetic_corpus(tmp_path / "tiny", lines=50)
    argv = study_argv(corpus, tmp_path, "all")
    assert run.main([argv[0], "--dry-run", *argv[1:]]) == 0
    out = capsys.readouterr().out
    # 18 at train.py's lr, 6 sweep runs at lr 0.02 and their 6 second seeds, the 2-epoch pair
    assert "gating: 0 run(s) recorded, 34 to do, about" in out and "2 at a time" in out
    assert "nag-neither-lr0.5-s2" in out and "[lr: chosen by the sweep]" in out
    assert "in all: about" in out
    assert not (tmp_path / "records").exists() and not (tmp_path / "runs").exists()


def test_a_record_kept_for_reference_is_not_one_of_its_studys_runs(tmp_path):
    """records/recipe/ keeps earlier default runs (another recipe, another machine) that still
    say study "default": the page must not count them as runs of the default study (it once
    averaged one into the default run's mean)."""
    from records import FORMAT, load_records

    record = {"format": FORMAT, "study": "default", "run_id": "gcnn-8-small-s1"}
    for where in ("default", "recipe", "recipe/one-thread/default"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "gcnn-8-small-s1.json").write_text(json.dumps(record))
    assert len(load_records(tmp_path)) == 1
    assert len(load_records(tmp_path, "default")) == 1
    assert load_records(tmp_path, "recipe") == []


def test_results_page_from_the_records(studies, tmp_path):
    import report

    _, root = studies
    out = tmp_path / "docs" / "results.md"
    plots = pytest.importorskip("matplotlib") is not None
    assert report.main(["--records", str(root / "records"), "--out", str(out)]) == 0
    page = out.read_text()
    for title in ("1. Gating", "2. Weight normalization", "3. Context", "4. GCNN against LSTM",
                  "5. Latency", "6. The default run", "7. The longer CPU recipe"):  # fmt: skip
        assert f"## {title}" in page
    assert "| GLU | 5,048 | " in page and "| ReLU (preset width) | 3,448 | " in page
    assert "- Fig. 3: GLU < ReLU: ReLU − GLU = " in page and "- Fig. 5: bilinear < linear: " in page
    assert "95% interval" in page and "- Fig. 3: ReLU ≈ GTU: " in page
    assert "- Machine: " in page and "- Budget: 4 updates of 64 tokens per run" in page
    assert "--data wikitext-103 --model gcnn-8" in page  # the full-scale command
    # the longer recipes: one sentence per recipe, both families, against the goal of 100
    long = page[page.index("## 7. The longer CPU recipe") :]
    for recipe in ("wt2_gcnn_long", "wt2_lstm_long", "wt2_lstm_long_dropout03"):
        sentence = (
            rf"`python train.py --config experiments/{recipe}\.toml [^`]*`: test perplexity "
            r"([\d.]+) in [\d.]+ min \(mean of 2 seeds\), against the goal of ≤ 100 within 60 "
            r"minutes: (met|not met)\."
        )
        found = re.search(sentence, long)
        assert found, recipe
        assert (found[2] == "met") == (float(found[1]) <= 100)
    assert (
        "history k" in page and "Learning-rate sweep" in page and "NAG learning-rate sweep" in page
    )
    if plots:
        for name in ("gating", "norm", "context", "lstm", "latency"):
            png = out.parent / "img" / f"{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"](img/{name}.png)" in page


def test_results_page_without_matplotlib(studies, tmp_path, monkeypatch, capsys):
    import report

    from gcnn.errors import run_cli

    _, root = studies
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "results.md"
    assert (
        run_cli(lambda: report.main(["--records", str(root / "records"), "--out", str(out)])) == 2
    )
    assert "matplotlib is not installed" in capsys.readouterr().err and not out.exists()
    assert report.main(["--records", str(root / "records"), "--out", str(out), "--no-plots"]) == 0
    assert "## 1. Gating" in out.read_text() and ".png" not in out.read_text()


def test_training_flops_count_context_and_only_the_tails_targets_need():
    from measure import flops_per_token

    tiny = {"embed_dim": 8, "cutoffs": [4, 8], "tail_factor": 2}
    gcnn = build_model("gcnn-small", 12, blocks=[{"layers": [[3, 8]], "repeat": 2}], **tiny)
    lstm = build_model("lstm-small", 12, hidden_size=8, **tiny)
    train = np.array([0, 1, 2, 3] * 2 + [4, 5, 6, 7] + [8, 9, 10, 11] * 2)  # 8 head, 4 + 8 tails
    for model in (gcnn, lstm):
        head = model.softmax.flops_per_token(full=False)
        network = model.flops_per_token(full_softmax=False) - head
        # tail i: d -> d/2^(i+1) -> 4 words; 4 of 20 targets in tail 0, 8 in tail 1
        tails = [2 * (8 * 4 + 4 * 4), 2 * (8 * 2 + 2 * 4)]
        expected_tail = 4 / 20 * tails[0] + 8 / 20 * tails[1]
        f = flops_per_token(model, {"block_size": 16, "context": 4}, train)
        scale = 1.0 if model.is_recurrent else (16 + 4) / 16  # a GCNN also runs its context
        assert f["network"] == pytest.approx(network * scale)
        assert f["head"] == head and f["tail"] == pytest.approx(expected_tail)
        assert f["train"] == pytest.approx(3 * (network * scale + head + expected_tail))


def test_training_time_excludes_validations():
    from measure import validation_curve

    rows = [  # 100 tokens/s while training; validations take wall time the curve must drop
        {"step": 2, "tokens": 200, "train_loss": 5.0, "tokens_per_s": 100.0, "wall_s": 2.0},
        {"step": 2, "tokens": 200, "valid_ppl": 90.0, "wall_s": 12.0},
        {"step": 4, "tokens": 400, "train_loss": 4.0, "tokens_per_s": 100.0, "wall_s": 14.0},
        {"step": 4, "tokens": 400, "valid_ppl": 70.0, "wall_s": 24.0},
        {"step": 5, "tokens": 500, "valid_ppl": 65.0, "wall_s": 35.0},  # after the last log
    ]
    curve = validation_curve(rows, train_flops_per_token=10.0)
    assert [p["train_s"] for p in curve] == [2.0, 4.0, 5.0]
    assert [p["wall_s"] for p in curve] == [12.0, 24.0, 35.0]
    assert [p["train_flops"] for p in curve] == [2000.0, 4000.0, 5000.0]


def test_flags_after_dashes_reach_each_family_only_where_they_apply():
    from study import for_family

    flags = ["--model-arg", "embed_dim=16", "--model-arg=blocks=[]", "--gating", "relu",
             "--no-weight-norm", "--lr", "0.1", "--model-arg", "hidden_size=3"]  # fmt: skip
    assert for_family(flags, "lstm") == [
        "--model-arg", "embed_dim=16", "--lr", "0.1", "--model-arg", "hidden_size=3"
    ]  # fmt: skip
    assert for_family(flags, "gcnn") == flags[:-2]


def test_a_sweep_won_at_its_edge_is_flagged():
    from page import edge_warning

    assert edge_warning("LSTM", 0.01, [0.005, 0.01, 0.02]) == []
    (line,) = edge_warning("LSTM", 0.02, [0.005, 0.01, 0.02])
    assert "largest swept" in line and "0.02" in line
    assert "smallest swept" in edge_warning("NAG", 0.1, [0.1, 0.3, 1.0])[0]
    assert edge_warning("NAG", 0.1, [0.1]) == []  # no sweep, nothing to flag


def test_estimates_ignore_the_partial_wall_time_of_resumed_runs():
    import runner
    from estimate import estimate_run

    def record(wall_s: float, resumed: bool) -> dict:
        done = {"train_s": 100.0, "tokens": 100_000}
        return {
            "study": "default",
            "variant": "gcnn-small",
            "wall_s": wall_s,
            "resumed": resumed,
            "model": {"family": "gcnn"},
            "config": {"data": "wikitext-2"},
            "done": done,
        }

    run = runner.Run("default", "gcnn-small", 1, ["--max-updates", "10"])
    seconds, source = estimate_run(run, [record(130.0, False), record(20.0, True)])
    assert source == "records of the same variant" and seconds == 130.0
    other = runner.Run("gating", "glu", 1, ["--max-updates", "10"])
    seconds, _ = estimate_run(other, [record(20.0, True)])
    assert seconds > 0  # a resumed run's 20 s of wall time against 100 s of training: no overhead


def test_a_run_that_diverges_before_its_first_checkpoint_is_recorded(tmp_path):
    """NAG without clipping can diverge within a few updates, before anything is saved: that is
    the norm study's result, so it must become a record rather than stop the study."""
    import run
    from conftest import write_synthetic_corpus

    corpus = write_synthetic_corpus(tmp_path / "tiny", lines=50)
    argv = study_argv(corpus, tmp_path, "norm", updates=8)
    argv[argv.index("--nag-lrs") + 1] = "1e30,2e30"  # NaN from the first update on
    argv = [*argv[:1], "--only", "nag-neither*", *argv[1:]]
    torch.set_num_threads(1)
    assert run.main(argv) == 0
    records = records_of(tmp_path, "norm")
    assert records and all(r["status"] == "diverged" for r in records.values())
    r = next(iter(records.values()))
    assert r["model"]["params"] > 0 and r["flops_per_token"]["train"] > 0 and "eval" not in r
    assert not list((tmp_path / "runs").rglob("checkpoint_*.pt"))
