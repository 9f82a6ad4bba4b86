"""--precision auto: decided by timing the model's own work, cached, and harmless to the run; a
measurement taken on a busy machine is not cached, and a cached choice that no longer holds is
measured again (issue 21). No real timing decides anything here: timers and loads are injected."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from gcnn import machine, precision
from gcnn.models import build_model
from gcnn.timing import Timing
from gcnn.training.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_train import args  # noqa: E402

REAL_BUSY_CPU_SECONDS = machine.busy_cpu_seconds  # before the fixture below replaces it


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    # a quiet 2-core machine unless a test says otherwise (the real one is shared)
    monkeypatch.setattr(machine, "cores", lambda: 2)
    monkeypatch.setattr(machine, "load_average", lambda: 0.1)
    # no CPU accounting: the load-average rule decides, fed by the tests' fake loads
    monkeypatch.setattr(machine, "busy_cpu_seconds", lambda: None)


def timings(fp32: float, bf16: float) -> dict[str, Timing]:
    return {"fp32": Timing.of([fp32]), "bf16": Timing.of([bf16])}


def tiny():
    torch.manual_seed(0)
    model = build_model("gcnn-small", 60, embed_dim=8, blocks=[{"layers": [[3, 8]]}], cutoffs=[9])
    x = torch.randint(0, 60, (2, 16))
    return model, x, x.roll(-1, 1)


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_auto_picks_the_faster_and_measures_in_full_once(monkeypatch, faster):
    model, x, y = tiny()
    calls = []

    def fake(model, inputs, targets, mode, rounds=3):
        calls.append((mode, rounds))
        return timings(1.0, 2.0) if faster == "fp32" else timings(2.0, 1.0)

    monkeypatch.setattr(precision, "measure_precisions", fake)
    assert precision.choose_precision(model, x, y, "train") == faster
    assert precision.choose_precision(model, x, y, "train") == faster  # cached, re-checked
    recheck = ("train", precision.RECHECK_ROUNDS)
    assert calls == [("train", 3), recheck] and precision.RECHECK_ROUNDS < 3
    assert precision.choose_precision(model, x[:1], y[:1], "train") == faster  # another shape
    assert precision.choose_precision(model, x, y, "score") == faster  # another kind of work
    assert calls == [("train", 3), recheck, ("train", 3), ("score", 3)]
    cached = json.loads(precision.cache_path().read_text())
    assert sum(isinstance(v, dict) for v in cached.values()) == 3


def test_measuring_leaves_the_model_and_the_random_stream_alone():
    model, x, y = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    seconds = precision.measure_precisions(model, x, y, "train", rounds=1)
    assert set(seconds) == {"fp32", "bf16"} and all(t.median > 0 for t in seconds.values())
    assert torch.equal(torch.rand(3), expected)  # dropout draws did not advance the generator
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_an_unwritable_cache_only_warns(monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("GCNN_CACHE", str(blocked / "sub"))  # a directory under a file
    monkeypatch.setattr(precision, "measure_precisions", lambda *a, **k: timings(1, 2))
    model, x, y = tiny()
    with pytest.warns(UserWarning, match="could not cache"):
        assert precision.choose_precision(model, x, y) == "fp32"


def test_cpu_without_bf16_needs_no_measurement(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(precision, "measure_precisions", lambda *a, **k: pytest.fail("measured"))
    model, x, y = tiny()
    assert precision.choose_precision(model, x, y) == "fp32"


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_training_with_auto_records_what_it_measured(tiny_corpus, tmp_path, monkeypatch, faster):
    seen = []

    def fake(model, inputs, targets, mode, rounds=3):
        seen.append((mode, tuple(inputs.shape)))
        return timings(1.0, 2.0) if faster == "fp32" else timings(2.0, 1.0)

    monkeypatch.setattr(precision, "measure_precisions", fake)
    out = tmp_path / "run"
    assert main(args(tiny_corpus, out, "--max-updates", "2", "--precision", "auto")) == 0
    assert seen == [("train", (4, 16 + 4))]  # 4 rows of context 4 + block 16: the real batch
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["precision"] == faster  # a resumed run keeps the same numerics


def test_the_real_measurement_returns_a_choice():
    model, x, y = tiny()
    assert precision.choose_precision(model, x, y, "score") in ("fp32", "bf16")


@pytest.mark.parametrize("family", ["gcnn", "lstm"])
def test_evaluation_precision_flag(tiny_corpus, tmp_path, capsys, monkeypatch, family):
    """fp32 is the default; bf16 autocast stays close to it; auto measures the scoring work."""
    from test_eval import tiny_model, write_checkpoint

    from gcnn.data import prepare_corpus
    from gcnn.evaluation.cli import main as evaluate

    corpus = prepare_corpus(tiny_corpus)
    path = write_checkpoint(
        tmp_path / "m.pt", tiny_model(family, corpus.tokenizer.vocab_size), corpus.tokenizer,
        tiny_corpus,
    )  # fmt: skip
    seen = []
    monkeypatch.setattr(
        precision,
        "measure_precisions",
        lambda model, inputs, targets, mode, rounds=3: seen.append(mode) or timings(2, 1),
    )
    results = {}
    for flag in ("fp32", "bf16", "auto"):
        assert evaluate(["perplexity", str(path), "--json", "--precision", flag]) == 0
        results[flag] = json.loads(capsys.readouterr().out)["perplexity"]
    assert seen == ["score"]
    assert results["bf16"] == pytest.approx(results["fp32"], rel=0.02)
    assert results["auto"] == results["bf16"]  # auto chose bf16, the (pretended) faster


# --- a choice that cannot be poisoned (issue 21) -------------------------------------------------

CPU = torch.device("cpu")


class FakeMachine:
    """Timings and 1-minute loads to hand out, in order: what each measurement will see."""

    def __init__(self, monkeypatch):
        self.loads: list[float] = []
        self.results: list[dict[str, Timing]] = []
        self.rounds: list[int] = []
        monkeypatch.setattr(
            machine, "load_average", lambda: self.loads.pop(0) if self.loads else 0.1
        )

    def measure(self, rounds: int) -> dict[str, Timing]:
        self.rounds.append(rounds)
        return self.results.pop(0)

    def will_measure(self, fp32: float, bf16: float, load=(0.1, 0.1), spread=0.0) -> None:
        """The next measurement: seconds per call, load before/after, and how much its rounds
        disagree ((max − min) / median of three rounds)."""
        self.loads += list(load)
        self.results.append(
            {p: Timing.of([t, t * (1 + spread), t]) for p, t in (("fp32", fp32), ("bf16", bf16))}
        )


def cached_entry(work: str = "w"):
    data = json.loads(precision.cache_path().read_text()) if precision.cache_path().exists() else {}
    return data.get(precision.machine_key(CPU, work))


def test_a_quiet_measurement_is_cached_with_its_load_and_both_timings(monkeypatch):
    fake = FakeMachine(monkeypatch)
    fake.will_measure(fp32=0.16, bf16=0.10, load=(0.2, 1.1))  # 1.1 − our 1 thread: quiet
    choice = precision.choose(CPU, "w", fake.measure)
    assert (choice.precision, choice.source, choice.cached) == ("bf16", "fresh", True)
    entry = cached_entry()
    assert entry["choice"] == "bf16" and entry["seconds"] == {"fp32": 0.16, "bf16": 0.10}
    assert entry["load"] == {
        "before": 0.2, "after": 1.1, "cores": 2, "threads": 1, "others_cpu": None
    }  # fmt: skip


@pytest.mark.parametrize(
    "load, spread",
    [((1.6, 1.7), 0.0), ((0.2, 2.4), 0.0), ((0.1, 0.1), 0.5)],
    ids=["busy-before", "busy-after", "rounds-disagree"],
)
def test_a_busy_or_noisy_measurement_decides_this_run_but_is_not_cached(monkeypatch, load, spread):
    fake = FakeMachine(monkeypatch)
    fake.will_measure(fp32=0.10, bf16=0.16, load=load, spread=spread)
    lines = []
    choice = precision.choose(CPU, "w", fake.measure, lines.append)
    assert (choice.precision, choice.source, choice.cached) == ("fp32", "fresh", False)
    assert not choice.measurement.trusted and cached_entry() is None
    assert "used for this run only" in lines[-1]
    # the next run measures in full again, on a quiet machine this time, and keeps that
    fake.will_measure(fp32=0.16, bf16=0.10)
    choice = precision.choose(CPU, "w", fake.measure)
    assert (choice.precision, choice.source, choice.cached) == ("bf16", "fresh", True)
    assert fake.rounds == [3, 3]


def test_an_instruction_set_cap_is_another_machine_to_the_cache(monkeypatch):
    # ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI runs oneDNN's bf16 without avx512_bf16 (half fp32's
    # speed on a Zen 4): a choice made without the cap must not be taken for one made with it
    for cap in machine.ISA_CAPS:
        monkeypatch.delenv(cap, raising=False)
    fake = FakeMachine(monkeypatch)
    fake.will_measure(fp32=0.16, bf16=0.10)
    assert precision.choose(CPU, "w", fake.measure).source == "fresh"
    plain_key, plain_name = precision.machine_key(CPU, "w"), machine.cpu_name()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert machine.cpu_name() == plain_name + " {ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI}"
    assert precision.machine_key(CPU, "w") != plain_key
    fake.will_measure(fp32=0.16, bf16=0.32)
    choice = precision.choose(CPU, "w", fake.measure)
    assert (choice.precision, choice.source, choice.cached) == ("fp32", "fresh", True)
    assert fake.rounds == [3, 3]  # measured in full: the entry without the cap was not re-checked
    data = json.loads(precision.cache_path().read_text())
    assert data[plain_key]["choice"] == "bf16"  # and is still there for runs without it


def poison(choice: str, fp32: float, bf16: float, load: dict) -> None:
    key = precision.machine_key(CPU, "w")
    entry = {"choice": choice, "seconds": {"fp32": fp32, "bf16": bf16}}
    entry |= {"spread": {"fp32": 0.0, "bf16": 0.0}, "load": load, "cpu": "x"}
    precision.cache_path().parent.mkdir(parents=True, exist_ok=True)
    data = {"version": precision.CACHE_VERSION, key: entry}
    precision.cache_path().write_text(json.dumps(data))


def test_a_poisoned_entry_recorded_under_load_is_measured_again(monkeypatch):
    # issue 21's incident: measured while another process kept both cores busy, fp32 "won"
    poison("fp32", 0.20, 0.25, {"before": 2.1, "after": 3.0, "cores": 2, "threads": 2})
    fake = FakeMachine(monkeypatch)
    fake.will_measure(fp32=0.16, bf16=0.10)  # quiet: bf16 is 1.6x faster
    choice = precision.choose(CPU, "w", fake.measure)
    assert (choice.precision, choice.source, choice.cached) == ("bf16", "re-measured", True)
    assert fake.rounds == [3] and cached_entry()["choice"] == "bf16"


def test_a_version_1_cache_entry_is_not_trusted(monkeypatch):
    key = precision.machine_key(CPU, "w")
    precision.cache_path().parent.mkdir(parents=True, exist_ok=True)
    old = {"version": 1, key: {"choice": "fp32", "seconds": {"fp32": 1, "bf16": 2}, "cpu": "x"}}
    precision.cache_path().write_text(json.dumps(old))
    fake = FakeMachine(monkeypatch)
    fake.will_measure(fp32=0.16, bf16=0.10)
    assert precision.choose(CPU, "w", fake.measure).precision == "bf16"
    assert fake.rounds == [3] and cached_entry()["choice"] == "bf16"


def test_a_cached_choice_the_recheck_contradicts_is_measured_again(monkeypatch):
    fake = FakeMachine(monkeypatch)
    fake.will_measure(fp32=0.10, bf16=0.12)  # quiet, trusted: fp32
    assert precision.choose(CPU, "w", fake.measure).precision == "fp32"
    # later the same work runs 1.6x faster in bf16 (say, a better oneDNN): the cheap re-check
    # sees the cached fp32 lose by far more than the margin, and measures in full again
    fake.will_measure(fp32=0.16, bf16=0.10)
    fake.will_measure(fp32=0.16, bf16=0.10)
    lines = []
    choice = precision.choose(CPU, "w", fake.measure, lines.append)
    assert (choice.precision, choice.source, choice.cached) == ("bf16", "re-measured", True)
    assert choice.recheck.seconds == {"fp32": 0.16, "bf16": 0.10}
    assert fake.rounds == [3, precision.RECHECK_ROUNDS, 3]
    assert "the cached fp32 no longer holds" in lines[0]
    # and the corrected entry holds from then on: one re-check, no full measurement
    fake.will_measure(fp32=0.16, bf16=0.10)
    choice = precision.choose(CPU, "w", fake.measure)
    assert (choice.precision, choice.source) == ("bf16", "cache")
    assert fake.rounds == [3, precision.RECHECK_ROUNDS, 3, precision.RECHECK_ROUNDS]


def test_a_recheck_within_the_margin_keeps_the_cached_choice(monkeypatch):
    fake = FakeMachine(monkeypatch)
    fake.will_measure(fp32=0.10, bf16=0.12)
    precision.choose(CPU, "w", fake.measure)
    fake.will_measure(fp32=0.104, bf16=0.100)  # fp32 4% slower now: noise, not a reversal
    choice = precision.choose(CPU, "w", fake.measure)
    assert (choice.precision, choice.source) == ("fp32", "cache")
    assert fake.rounds == [3, precision.RECHECK_ROUNDS]


def test_a_contradicted_choice_measured_again_while_busy_keeps_the_old_entry(monkeypatch):
    fake = FakeMachine(monkeypatch)
    fake.will_measure(fp32=0.10, bf16=0.12)
    precision.choose(CPU, "w", fake.measure)
    before = cached_entry()
    fake.will_measure(fp32=0.30, bf16=0.12, load=(1.8, 2.0))  # busy now: everything is off
    fake.will_measure(fp32=0.30, bf16=0.12, load=(1.8, 2.0))
    choice = precision.choose(CPU, "w", fake.measure)
    assert (choice.precision, choice.source, choice.cached) == ("bf16", "re-measured", False)
    assert cached_entry() == before  # this run's busy measurement decided only this run


def test_the_choice_is_recorded_as_a_comment_config_toml_can_carry(monkeypatch):
    from gcnn.training.config import TrainConfig, load_toml, to_toml

    fake = FakeMachine(monkeypatch)
    fake.will_measure(fp32=0.16, bf16=0.10, load=(0.25, 0.5))
    fake.will_measure(fp32=0.17, bf16=0.11)
    precision.choose(CPU, "w", fake.measure)
    choice = precision.choose(CPU, "w", fake.measure)  # from the cache, re-checked
    config = TrainConfig(precision=choice.precision)
    path = Path(precision.cache_path().parent / "config.toml")
    path.write_text(to_toml(config) + choice.toml_comment())
    assert TrainConfig.from_dict(load_toml(path)) == config  # still a valid --config file
    line = path.read_text().splitlines()[-1]
    record = tomllib.loads(line.removeprefix("# "))["precision_auto"]
    assert record["precision"] == "bf16" and record["source"] == "cache"
    assert (record["fp32_ms"], record["bf16_ms"]) == (160.0, 100.0)  # what the choice rests on
    assert (record["recheck_fp32_ms"], record["recheck_bf16_ms"]) == (170.0, 110.0)
    assert (record["load_before"], record["load_after"], record["cores"]) == (0.25, 0.5, 2)
    assert record["trusted"] and record["recheck_trusted"] and not record["cached"]


@pytest.mark.parametrize(
    "before, after, threads, others, busy",
    [(0.2, 1.9, 2, 0.2, False), (1.2, 1.3, 1, 1.2, True), (0.0, 2.5, 1, 1.5, True)],
)
def test_load_beyond_our_own_threads_is_what_makes_a_machine_busy(
    before, after, threads, others, busy
):
    reading = machine.LoadReading(before, after, cores=2, threads=threads)
    assert reading.others == pytest.approx(others) and reading.busy == busy


@pytest.mark.parametrize(
    "busy, own, others, verdict",
    [
        # issue 21's false alarm: right after our own earlier work the 1-minute load average is
        # still 2.1, but over the measurement all the CPU time used was ours
        ((100.0, 104.0), (10.0, 13.8), 0.1, False),
        ((100.0, 105.0), (10.0, 12.0), 1.5, True),  # another process kept 1.5 cores busy
    ],
)
def test_others_are_the_cpu_time_we_did_not_use(monkeypatch, busy, own, others, verdict):
    busy, own, clock = list(busy), list(own), [0.0, 2.0]
    monkeypatch.setattr(machine, "busy_cpu_seconds", lambda: busy.pop(0))
    monkeypatch.setattr(machine, "own_cpu_seconds", lambda: own.pop(0))
    monkeypatch.setattr(machine.time, "monotonic", lambda: clock.pop(0))
    monkeypatch.setattr(machine, "load_average", lambda: 2.1)
    reading = machine.LoadMeter().start().stop()
    assert reading.others == pytest.approx(others) and reading.busy == verdict
    assert machine.LoadReading.from_json(reading.to_json()) == reading


def test_the_cpu_accounting_reads_this_machine():
    first = REAL_BUSY_CPU_SECONDS()
    if first is None:
        pytest.skip("no /proc/stat here")
    sum(i * i for i in range(200_000))  # some CPU time of our own
    assert REAL_BUSY_CPU_SECONDS() >= first and machine.own_cpu_seconds() > 0


def test_every_benchmark_reports_the_load_it_ran_under(monkeypatch, capsys):
    loads = [0.3, 2.3]
    monkeypatch.setattr(machine, "load_average", lambda: loads.pop(0))
    with machine.reported_load():
        pass
    out = capsys.readouterr().out
    assert "load average before: 0.30 (2 cores)" in out and "load average after: 2.30" in out
    assert "warning: other processes kept this machine busy" in out  # 2.3 − our 1 thread > 1
    scripts = sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py"))
    runnable = [p for p in scripts if 'if __name__ == "__main__":' in p.read_text()]
    assert len(runnable) >= 8
    reports = ("reported_load()", "run_benchmark(main)")  # the second runs main in the first
    assert [p.name for p in runnable if not any(r in p.read_text() for r in reports)] == []


def test_the_precision_check_reports_the_hardware_rule_where_there_is_no_bf16(
    monkeypatch, tmp_path, capsys
):
    # an AVX2-only CPU (or ONEDNN_MAX_CPU_ISA=AVX2): nothing to measure, so nothing to poison
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import precision_check

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(precision_check, "batch", lambda *a: pytest.fail("built a model"))
    assert precision_check.main(["--json", str(tmp_path / "check.json")]) == 0
    assert "no bf16 path: auto picks fp32" in capsys.readouterr().out
    assert json.loads((tmp_path / "check.json").read_text())["hardware"] == "fp32"


def test_benchmarks_time_bf16_only_where_the_hardware_has_a_path(monkeypatch):
    assert precision.available(CPU) == ("fp32", "bf16")  # the fixture: a CPU with bf16
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.available(CPU) == ("fp32",)
