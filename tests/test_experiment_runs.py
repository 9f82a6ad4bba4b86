"""experiments/: the FLOP-matched and budget studies end to end at toy scale, and what every new
record carries (load through the run, the commit, repo-relative paths, a divergence's cause);
runs side by side with --jobs."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gcnn.errors import GcnnError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_experiments import TINY, records_of  # noqa: E402


def argv(corpus: Path, root: Path, *studies: str) -> list[str]:
    return [
        *studies, "--in-process", "--data", str(corpus), "--seeds", "2",
        "--max-updates", "4", "--valid-points", "2",
        "--records", str(root / "records"), "--runs", str(root / "runs"),
        "--budget-minutes", "0.01,0.02", "--budget-pflops", "1e-9,2e-9",
        "--", *TINY,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def new_studies(tmp_path_factory):
    import run
    from conftest import write_synthetic_corpus

    root = tmp_path_factory.mktemp("new")
    corpus = write_synthetic_corpus(root / "tiny")
    torch.set_num_threads(1)
    assert run.main(argv(corpus, root, "flops", "budget")) == 0
    return corpus, root


def test_flop_matched_pairs_do_the_same_network_flops(new_studies):
    _, root = new_studies
    flops = records_of(root, "flops")
    for size in ("small", "preset"):
        pair = {
            f: next(
                r for r in flops.values() if r["info"]["size"] == size and r["info"]["family"] == f
            )
            for f in ("gcnn", "lstm")
        }
        g, lstm = (pair[f]["flops_per_token"]["network"] for f in ("gcnn", "lstm"))
        assert abs(g - lstm) < 0.05 * g, (size, g, lstm)  # matched, to one hidden unit
        assert (
            pair["lstm"]["model"]["config"]["softmax_dim"]
            == pair["gcnn"]["model"]["config"]["blocks"][-1]["layers"][-1][1]
        )
        for family in ("gcnn", "lstm"):  # a sweep, then the second seed at the chosen lr
            mine = [
                r
                for r in flops.values()
                if r["info"]["size"] == size and r["info"]["family"] == family
            ]
            assert {r["info"]["lr"] for r in mine if r["seed"] == 1} >= {0.005, 0.01, 0.02}
            assert any(r["seed"] == 2 for r in mine)


def test_budget_runs_end_their_schedule_at_their_budget(new_studies):
    _, root = new_studies
    budget = records_of(root, "budget")
    timed = [r for r in budget.values() if r["info"]["budget"] == "time"]
    counted = [r for r in budget.values() if r["info"]["budget"] == "flops"]
    assert len(timed) == len(counted) == 2 * 2 * 2  # 2 families x 2 budgets x 2 seeds
    assert {r["config"]["max_minutes"] for r in timed} == {0.01, 0.02}
    for r in counted:  # the updates the budget buys, from the model's own FLOPs per update
        per_update = r["flops_per_token"]["train"] * r["config"]["tokens_per_batch"]
        assert r["config"]["max_updates"] == max(1, int(r["info"]["pflop"] * 1e15 // per_update))
        assert r["config"]["max_updates"] * per_update <= r["info"]["pflop"] * 1e15 or (
            r["config"]["max_updates"] == 1
        )


def test_new_records_carry_load_commit_and_no_absolute_path(new_studies):
    _, root = new_studies
    r = next(iter(records_of(root, "flops").values()))
    load = r["load"]
    assert load["samples"] >= 2 and load["max"] >= max(load["start"], load["end"]) - 1e-9
    assert r["load_average"] == [load["start"], load["end"]]
    assert set(r["git"]) == {"commit", "dirty"}
    assert "cpu_kind" in r["machine"]  # "family F model M" where /proc/cpuinfo says (Linux)
    text = json.dumps(r)
    assert str(ROOT) + "/" not in text  # inside the repository: written relative to it


def test_the_new_sections_and_plots(new_studies, tmp_path):
    import report

    _, root = new_studies
    out = tmp_path / "results.md"
    assert report.main(["--records", str(root / "records"), "--out", str(out), "--no-plots"]) == 0
    page = out.read_text()
    assert "## 8. GCNN against LSTM at matched FLOPs" in page and "small, equal FLOPs" in page
    assert "## 9. GCNN against LSTM at equal budgets" in page and "- 0.01 min: GCNN < LSTM" in page


def test_readme_names_the_largest_budgets_verdicts(new_studies):
    """README's table: GCNN vs LSTM at the largest time and FLOP budgets, with the verdict."""
    import readme
    from records import load_records

    _, root = new_studies
    rows = readme.budget_rows(load_records(root / "records", "budget"))
    named = sorted(row[0].split(", ")[1] for row in rows)  # only the largest of each kind
    assert named == ["0.02 min of training", "2e-09 PFLOP of training"]
    figures = " ".join(row[2] for row in rows)
    assert figures.count("GCNN < LSTM") == 2 and "paired seeds" in figures


def test_runs_side_by_side(tmp_path, monkeypatch):
    """--jobs 2: two runs of one stage at once, each record written as it finishes."""
    import runner

    active, peak, lock = [0], [0], threading.Lock()

    def execute(self, run):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return {"run_id": run.run_id, "wall_s": 0.2, "threads": self.threads}

    monkeypatch.setattr(runner.Runner, "execute", execute)
    monkeypatch.setattr(runner.Run, "spec", lambda self: {})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    r = runner.Runner(runner.Options(records=tmp_path, runs=tmp_path / "runs", jobs=2))
    counted = ["--max-updates", "4"]
    runs = [runner.Run("s", f"v{i}", 1, counted) for i in range(4)]
    records = r.run(runs)
    assert [x["run_id"] for x in records] == [f"v{i}-s1" for i in range(4)] and peak[0] == 2
    assert all(x["threads"] == max(1, (__import__("os").cpu_count() or 1) // 2) for x in records)
    assert len(list(tmp_path.glob("s/*.json"))) == 4
    peak[0] = 0
    r.run([runner.Run("s", f"w{i}", 1, counted) for i in range(3)], jobs=1)
    assert peak[0] == 1
    # a run a clock can end (--max-minutes, or the default's 9 minutes) has the machine to
    # itself even under --jobs 2, whatever the study asked; the others still go two at a time
    timed = [runner.Run("s", "t1", 1, ["--max-minutes", "1"]), runner.Run("s", "t2", 1, [])]
    assert all(run.timed for run in timed) and not runs[0].timed
    peak[0] = 0
    records = r.run([*timed, runner.Run("s", "c", 1, counted), runner.Run("s", "d", 1, counted)])
    assert [x["run_id"] for x in records] == ["t1-s1", "t2-s1", "c-s1", "d-s1"]
    assert [x["threads"] for x in records[:2]] == [None, None]  # None: all the cores
    assert peak[0] == 2
    assert r.run([runner.Run("s", "lone", 1, counted)])[0]["threads"] is None  # all the cores


def test_a_divergence_records_where_and_why(tmp_path):
    import run
    from conftest import write_synthetic_corpus

    corpus = write_synthetic_corpus(tmp_path / "tiny", lines=50)
    args = argv(corpus, tmp_path, "norm")
    args[args.index("--max-updates") + 1] = "8"
    args = [*args[:1], "--only", "nag-neither*", "--nag-lrs", "1e30,2e30", *args[1:]]
    assert run.main(args) == 0
    r = next(iter(records_of(tmp_path, "norm").values()))
    assert r["status"] == "diverged" and "diverged" in r["diverged"]["cause"]
    assert r["diverged"]["update"] is not None


def test_default_run_record_names_the_runs_commit_not_a_later_benchmarks(tmp_path, capsys):
    """summarize_default_run.py: the commit is default-train.txt's (the run's), not lscpu.txt's,
    which a later `cpu_kind_check.sh --no-default` rewrites; the figures come from the files."""
    import summarize_default_run

    rows = [
        {"step": 10, "epoch": 0.5, "wall_s": 5.0, "valid_loss": None, "tokens_per_s": 900.0},
        {"step": 15, "epoch": 0.7, "wall_s": 7.0, "valid_loss": None, "tokens_per_s": 1200.4},
        {"step": 20, "epoch": 1.0, "wall_s": 9.0, "valid_loss": 5.0, "tokens_per_s": None},
        {"step": 30, "epoch": 1.5, "wall_s": 14.0, "valid_loss": None, "tokens_per_s": 1100.0},
        {"step": 40, "epoch": 2.0, "wall_s": 19.0, "valid_loss": 4.5},
    ]
    (tmp_path / "default-metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "default-test.json").write_text('{"perplexity": 99.123}\n')
    lscpu = "2026-12-07T10:00:00Z\nbbbbbbb\nModel name:  Some CPU\n"
    (tmp_path / "lscpu.txt").write_text(lscpu)
    header = "$ python train.py --no-progress --out runs/x  (2026-12-06T10:00:00Z, aaaaaaa)\n"
    (tmp_path / "default-train.txt").write_text(header + "gcnn-8-small: ...\n")
    assert summarize_default_run.main([str(tmp_path)]) == 0
    record = json.loads((tmp_path / "default-run.json").read_text())
    assert record["commit"] == "aaaaaaa" and record["cpu"] == "Some CPU"
    assert (record["updates"], record["best_step"], record["test_ppl"]) == (40, 40, 99.12)
    assert record["valid_ppl"] == [{"step": 20, "ppl": 148.41}, {"step": 40, "ppl": 90.02}]
    assert record["tokens_per_s_median"] == 1100  # of the rows that logged a speed
    # a record from before the header keeps the commit its default-run.json was written with
    (tmp_path / "default-train.txt").write_text("gcnn-8-small: ...\n")
    assert summarize_default_run.main([str(tmp_path)]) == 0
    assert json.loads((tmp_path / "default-run.json").read_text())["commit"] == "aaaaaaa"
    (tmp_path / "default-run.json").unlink()
    assert summarize_default_run.main([str(tmp_path)]) == 0
    assert json.loads((tmp_path / "default-run.json").read_text())["commit"] is None
    assert "emulating" not in json.loads((tmp_path / "default-run.json").read_text())
    # a run under `cpu_kind_check.sh --emulate no-bf16` says so
    emulated = "emulating no-bf16: ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI"
    (tmp_path / "lscpu.txt").write_text(lscpu + emulated + "\n")
    assert summarize_default_run.main([str(tmp_path)]) == 0
    record = json.loads((tmp_path / "default-run.json").read_text())
    assert record["emulating"] == emulated[len("emulating ") :]
    assert record["command"] == "python train.py"
    # another seed of the default, under the caps: the command says which
    header = "$ ONEDNN_MAX_CPU_ISA=AVX2 python train.py --seed 2 --no-progress --out runs/y  "
    (tmp_path / "default-train.txt").write_text(header + "(2026-12-07T10:00:00Z, ccccccc)\n")
    assert summarize_default_run.main([str(tmp_path)]) == 0
    record = json.loads((tmp_path / "default-run.json").read_text())
    assert (record["command"], record["commit"]) == ("python train.py --seed 2", "ccccccc")
    capsys.readouterr()


def test_default_runs_are_compared_paired_by_position(tmp_path, capsys):
    """compare_default_runs.py: after/before ratios and before - after differences, paired one to
    one, with an interval that says whether the change is separated from none."""
    import compare_default_runs

    def run(name, updates, speed, ppl):
        d = tmp_path / name
        d.mkdir()
        record = {"updates": updates, "tokens_per_s_median": speed, "test_ppl": ppl}
        (d / "default-run.json").write_text(json.dumps(record))
        return str(d)

    before = [run("b1", 1000, 100.0, 130.0), run("b2", 900, 90.0, 131.0)]
    after = [run("a1", 1300, 130.0, 129.0), run("a2", 1150, 117.0, 131.5)]
    out = tmp_path / "cmp.json"
    args = ["--before", *before, "--after", *after, "--json", str(out)]
    assert compare_default_runs.main(args) == 0
    r = json.loads(out.read_text())
    assert r["updates"]["pairs"] == [[1000, 1300], [900, 1150]]
    assert r["updates"]["mean"] == pytest.approx((1.3 + 1150 / 900) / 2)
    assert r["updates"]["separated"] and r["tokens_per_s_median"]["separated"]
    assert r["test_ppl"]["mean"] == pytest.approx(0.25) and not r["test_ppl"]["separated"]
    assert "holds" in capsys.readouterr().out
    with pytest.raises(GcnnError, match="pair them one to one"):
        compare_default_runs.main(["--before", *before, "--after", after[0]])
