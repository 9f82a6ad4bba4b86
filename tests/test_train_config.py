"""TrainConfig: defaults < TOML < flags, typed checks with one-line errors, TOML round trip."""

from __future__ import annotations

import dataclasses

import pytest

from gcnn.errors import GcnnError
from gcnn.training.config import (
    TrainConfig,
    compose,
    load_toml,
    parse_flags,
    to_toml,
)
from gcnn.training.trainer import resolve


def config_from(argv, toml_text=None, tmp_path=None):
    if toml_text is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml_text)
        argv = ["--config", str(path), *argv]
    config_file, flags = parse_flags(argv)
    return compose(flags, config_file)


def test_flags_win_over_toml_which_wins_over_defaults(tmp_path):
    text = 'model = "gcnn-8"\nlr = 0.5\nblock_size = 64\n[model_args]\nembed_dim = 32\n'
    c = config_from(["--lr", "0.25", "--model-arg", "cutoffs=[10, 20]"], text, tmp_path)
    assert c.model == "gcnn-8"  # from the file
    assert c.lr == 0.25  # the flag wins
    assert c.block_size == 64
    assert c.tokens_per_batch == TrainConfig().tokens_per_batch  # default
    assert c.model_args == {"embed_dim": 32, "cutoffs": [10, 20]}  # merged


def test_no_arguments_is_gcnn_8_small_on_wikitext2_with_adamw():
    c = resolve(config_from([]))
    assert (c.model, c.data, c.optimizer) == ("gcnn-8-small", "wikitext-2", "adamw")
    # a fixed training time (`time python train.py` about 10 minutes), the cosine on the clock
    assert c.max_updates is None and c.max_minutes == 9.0
    assert c.out.endswith("gcnn-8-small-wikitext-2")


def test_small_presets_default_to_their_own_recipe_and_flags_still_win():
    from gcnn.training.recipe import SMALL_RECIPES, TOKENS_PER_BATCH

    gcnn = resolve(config_from([]))
    assert {k: getattr(gcnn, k) for k in SMALL_RECIPES["gcnn-8-small"]} == SMALL_RECIPES[
        "gcnn-8-small"
    ]
    assert gcnn.lr == 3e-2 and resolve(config_from(["--model", "gcnn-small"])).lr == 2e-2
    assert gcnn.dropout_from_epoch == 4  # late dropout, the default's only
    assert resolve(config_from(["--model", "gcnn-small"])).dropout_from_epoch == 0
    lstm = resolve(config_from(["--model", "lstm-small"]))
    assert (lstm.tokens_per_batch, lstm.lr, lstm.dropout) == (TOKENS_PER_BATCH, 1e-2, None)
    mine = resolve(config_from(["--tokens-per-batch", "1024", "--lr", "0.005", "--dropout", "0"]))
    assert (mine.tokens_per_batch, mine.lr, mine.dropout) == (1024, 0.005, 0.0)
    # the recipe's lr and weight decay are AdamW's: NAG on the small preset keeps NAG's
    nag = resolve(config_from(["--optimizer", "nag"]))
    assert (nag.lr, nag.weight_decay) == (1.0, 5e-6)
    assert resolve(config_from(["--weight-decay", "0.01"])).weight_decay == 0.01
    paper = resolve(config_from(["--model", "gcnn-8", "--dataset", "wikitext-103"]))
    assert (paper.tokens_per_batch, paper.dropout) == (TOKENS_PER_BATCH, None)


def test_paper_presets_default_to_the_nag_recipe():
    c = resolve(config_from(["--model", "gcnn-14", "--dataset", "wikitext-103"]))
    assert (c.optimizer, c.lr, c.momentum, c.clip_norm, c.weight_decay, c.lr_shrink) == (
        "nag",
        1.0,
        0.99,
        0.1,
        5e-6,
        0.5,
    )
    assert c.max_epochs == 35


def test_resolved_config_roundtrips_through_toml(tmp_path):
    c = resolve(
        config_from(["--model-arg", "blocks=[{layers=[[3, 16]], repeat=2}]", "--seed", "7"])
    )
    path = tmp_path / "config.toml"
    path.write_text(to_toml(c))
    back = TrainConfig.from_dict(load_toml(path))
    assert dataclasses.asdict(back) == dataclasses.asdict(c)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--lr", "-1"], "--lr"),
        (["--lr", "abc"], "--lr"),
        (["--optimizer", "sgd"], "--optimizer"),
        (["--block-size", "0"], "--block-size"),
        (["--device", "tpu"], "--device"),
        (["--dropout", "1.5"], "--dropout"),
        (["--max-minutes", "nan"], "--max-minutes"),
        (["--model-arg", "oops"], "KEY=VALUE"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--dataset", "ptb"], "--dataset"),
    ],
)
def test_bad_flag_values_are_one_line_errors(argv, needle):
    with pytest.raises(GcnnError) as err:
        config_from(argv)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("lr = 'fast'\n", "lr"),
        ("learning_rate = 1.0\n", "learning_rate"),
        ("block_size = 2.5\n", "block_size"),
        ("compile = 1\n", "compile"),
        ("lr = [\n", "not valid TOML"),
    ],
)
def test_bad_toml_names_the_file_and_key(tmp_path, text, needle):
    with pytest.raises(GcnnError) as err:
        config_from([], text, tmp_path)
    assert needle in str(err.value) and "c.toml" in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(GcnnError, match="does not exist"):
        config_from(["--config", str(tmp_path / "nope.toml")])


def test_experiment_presets_parse():
    from pathlib import Path

    experiments = Path(__file__).parent.parent / "experiments"
    files = sorted(experiments.glob("*.toml"))
    assert files, "experiments/*.toml missing"
    for path in files:
        c = resolve(compose({}, str(path)))
        assert c.model and c.optimizer in ("nag", "adamw"), path
    # the file that spells out the no-argument default resolves to exactly that default
    spelled_out = resolve(compose({}, str(experiments / "wt2_gcnn_small.toml")))
    assert spelled_out == resolve(config_from([]))
