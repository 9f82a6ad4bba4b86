"""What a GPU run depends on, proven on the CPU where the logic allows it.

No GPU has run this code in CI: every path a CUDA run takes differently (autocast of the LSTM,
pinned asynchronous copies, host-side softmax plans, one synchronisation per update, device
choice under torchrun, precision detection, latency timing) is tested here through its logic,
and tests/test_cuda.py runs the same paths for real wherever a GPU is present.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gcnn import timing
from gcnn.checkpoint import load_checkpoint, load_model, model_checkpoint, save_checkpoint
from gcnn.data import BlockBatcher, StreamBatcher, prepare_corpus
from gcnn.errors import GcnnError
from gcnn.evaluation import inference
from gcnn.evaluation.perplexity import corpus_nll
from gcnn.models import build_model
from gcnn.training import distributed
from gcnn.training import trainer as trainer_module
from gcnn.training.cli import main
from gcnn.training.config import TrainConfig, compose, parse_flags
from gcnn.training.optim import make_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TINY, TINY_LSTM, args  # noqa: E402


def config_of(argv: list[str]) -> TrainConfig:
    config_file, flags = parse_flags(argv)
    return compose(flags, config_file)


# --- 1. the LSTM under autocast ----------------------------------------------------------------


def test_lstm_state_keeps_the_weights_dtype_under_bf16_autocast():
    model = build_model("lstm-small", 50, embed_dim=8, hidden_size=8, cutoffs=[])
    x = torch.randint(0, 50, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = model(x)
        _, state = model(x, state)  # a carried fp32 state goes back in under autocast
    assert all(s.dtype == torch.float32 for s in state)


def test_lstm_trained_in_bf16_resumes_in_fp32(tiny_corpus, tmp_path):
    """The carried state goes into the checkpoint: saved in bf16 it broke an fp32 resume."""
    out = tmp_path / "run"
    flags = ("--max-updates", "2", "--save-every", "1")
    assert main(args(tiny_corpus, out, *flags, "--precision", "bf16", base=TINY_LSTM)) == 0
    h, c = load_checkpoint(out / "checkpoint_last.pt")["data_position"]["state"]
    assert h.dtype == c.dtype == torch.float32
    resumed = ("--max-updates", "4", "--resume", "--precision", "fp32")
    assert main(args(tiny_corpus, out, *resumed, base=TINY_LSTM)) == 0
    assert load_checkpoint(out / "checkpoint_last.pt")["step"] == 4


# --- 2. batches: the epoch's deal once, the global count without communication ----------------


def test_block_batcher_deals_an_epoch_once(monkeypatch):
    batcher = BlockBatcher(np.arange(5000), 0, 16, 4, context=3, shuffle=True, seed=1)
    calls = []
    real = BlockBatcher.block_order
    monkeypatch.setattr(BlockBatcher, "block_order", lambda s, e: calls.append(e) or real(s, e))
    first = [batcher.batch(0, i) for i in range(len(batcher))]
    assert calls == [0]  # one permutation for the whole epoch, not one per batch
    batcher.batch(1, 0)
    assert calls == [0, 1]
    again = [batcher.batch(0, i) for i in range(3)]  # going back recomputes the same deal
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=False))


@pytest.mark.parametrize("kind", ["block", "stream"])
def test_every_rank_knows_the_global_target_count(kind):
    tokens = np.arange(1003)

    def make(rank):
        if kind == "block":
            return BlockBatcher(tokens, 0, 16, 3, 5, True, 7, rank=rank, world_size=3)
        return StreamBatcher(tokens, 0, 16, 3, rank=rank, world_size=3)

    ranks = [make(r) for r in range(3)]
    for index in range(len(ranks[0])):
        each = [int((b.batch(2, index)[1] != -100).sum()) for b in ranks]
        assert all(b.global_batch_targets(2, index) == sum(each) for b in ranks)


# --- 3. host-device synchronisations, counted --------------------------------------------------

# Operations that make the host wait for the device: reading a value back, or an output whose
# size depends on the data (nonzero, a boolean-mask index).
SYNCING_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero"}


class SyncCounter(TorchDispatchMode):
    """Records the syncing operations that tensors (not numpy on the host) go through, with the
    tensor they read, so that reads of known host-side tensors can be told apart."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        bool_index = name == "aten.index" and any(
            t is not None and t.dtype == torch.bool for t in args[1]
        )
        if name in SYNCING_OPS or bool_index:
            self.seen.append((name, args[0].data_ptr()))
        return func(*args, **(kwargs or {}))

    def device_syncs(self, optimizer=None) -> list[str]:
        """What would stall a GPU. Reads of the optimizer's `step` counters do not: PyTorch keeps
        them on the host (unless fused/capturable) precisely so that reading them is free."""
        host = set()
        if optimizer is not None:
            host = {s["step"].data_ptr() for s in optimizer.state.values() if "step" in s}
        return [name for name, ptr in self.seen if ptr not in host]


@pytest.mark.parametrize("base", [TINY, TINY_LSTM], ids=["gcnn", "lstm"])
def test_an_update_and_a_validation_sync_once(tiny_corpus, tmp_path, monkeypatch, base):
    """On a GPU every counted op would stall the host; the update's single all_sum (`.tolist()`,
    invisible to the dispatcher) is the one planned sync, and it is counted separately."""
    config = config_of(args(tiny_corpus, tmp_path / "run", base=base))
    trainer = trainer_module.Trainer(config)
    all_sums = []
    real_all_sum = trainer.dist.all_sum
    monkeypatch.setattr(trainer.dist, "all_sum", lambda *a: all_sums.append(1) or real_all_sum(*a))
    trainer.session_t0 = 0.0
    trainer.model.train()
    for _ in range(2):  # the second update also runs on optimizer state
        with SyncCounter() as counter:
            trainer.update(trainer_module.SignalStopper())
        assert counter.device_syncs(trainer.optimizer) == [] and len(all_sums) == 1
        all_sums.clear()
    with SyncCounter() as counter:
        trainer.validate()
    assert counter.device_syncs() == [] and len(all_sums) == 1


def test_exact_perplexity_syncs_once_at_the_end():
    model = build_model("gcnn-small", 60, embed_dim=8, blocks=[{"layers": [[3, 8]]}], cutoffs=[9])
    tokens = np.random.default_rng(0).integers(0, 60, 500).astype(np.int32)
    with SyncCounter() as counter:
        corpus_nll(model, tokens, 0, block_size=32, batch_size=4)
    assert counter.device_syncs() == []  # (the final .item() is not seen by the dispatcher)


# --- 4. distributed start ----------------------------------------------------------------------


def test_data_is_prepared_before_any_process_group(tiny_corpus, tmp_path, monkeypatch):
    order = []
    real_prepare, real_init = prepare_corpus, distributed.init_distributed
    monkeypatch.setattr(
        "gcnn.data.prepare_corpus", lambda *a, **k: order.append("data") or real_prepare(*a, **k)
    )
    monkeypatch.setattr(
        trainer_module, "init_distributed", lambda c: order.append("group") or real_init(c)
    )
    trainer_module.Trainer(config_of(args(tiny_corpus, tmp_path / "run")))
    assert order == ["data", "group"]


def test_explicit_gpu_index_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.resolve_device("cuda", local_rank=2) == torch.device("cuda:2")
    assert distributed.resolve_device("cuda:1", local_rank=None) == torch.device("cuda:1")
    with pytest.raises(GcnnError, match="every rank would use that one GPU"):
        distributed.resolve_device("cuda:0", local_rank=1)


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp32"), ((8, 0), "bf16")])
def test_auto_precision_on_cuda_asks_the_runs_own_device(monkeypatch, capability, expected):
    asked = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability
    )
    # emulated bf16 counts as "supported" to torch; it must not count here
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    device = torch.device("cuda:3")
    assert distributed.resolve_precision(TrainConfig(precision="auto"), device) == expected
    assert asked == [device]


# --- 5. latency on a GPU -----------------------------------------------------------------------


def test_latency_waits_for_the_device_it_measures(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: waited.append(d))
    timing.synchronizer("cuda:1")()
    assert waited == [torch.device("cuda:1")]


def test_latency_gives_each_family_its_best_precision_and_one_fp32():
    lstm = build_model("lstm-small", 50, embed_dim=8, hidden_size=8, cutoffs=[])
    gcnn = build_model("gcnn-small", 50, embed_dim=8, blocks=[{"layers": [[3, 8]]}], cutoffs=[])
    assert inference.inference_dtype(lstm, "bf16", "cuda") == torch.float16  # cuDNN has no bf16
    assert inference.inference_dtype(gcnn, "bf16", "cuda") == torch.bfloat16
    assert inference.inference_dtype(lstm, "bf16", "cpu") == torch.bfloat16
    assert inference.inference_dtype(lstm, "fp32", "cuda") == torch.float32
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with inference.strict_fp32("cuda:0"):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags


# --- 6./7. evaluation without weight norm, the optimizer ----------------------------------------


def test_load_model_for_inference_folds_weight_norm(tmp_path):
    from gcnn.data import WordTokenizer

    tokenizer = WordTokenizer.from_counts({f"w{i}": 100 - i for i in range(40)})
    model = build_model("gcnn-small", tokenizer.vocab_size, embed_dim=8, cutoffs=[10])
    path = tmp_path / "m.pt"
    save_checkpoint(path, model_checkpoint(model, tokenizer))
    kept, _, _ = load_model(path)
    folded, _, _ = load_model(path, inference=True)
    assert any("parametrizations" in n for n, _ in kept.named_parameters())
    assert not any("parametrizations" in n for n, _ in folded.named_parameters())
    x = torch.randint(0, tokenizer.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(folded(x)[0], kept(x)[0], rtol=1e-5, atol=1e-6)


def test_adamw_decays_matrices_but_not_gains_or_biases():
    model = build_model("gcnn-small", 50, embed_dim=8, blocks=[{"layers": [[3, 8]]}], cutoffs=[9])
    opt = make_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    gains = {n for n in names.values() if n.endswith("original0")}
    directions = {n for n in names.values() if n.endswith("original1")}
    assert gains and not gains & decayed  # g: shaped (out, 1, 1), yet not decayed
    assert directions <= decayed and "embed.weight" in decayed
    assert not any(n.endswith("bias") for n in decayed)
    fused = make_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3), torch.device("cuda"))
    assert fused.defaults["fused"] is True


def test_fused_nag_takes_the_same_steps_as_torchs_own_sgd():
    """NAG runs fused (one kernel for momentum, Nesterov's look-ahead and weight decay); its
    updates are torch's per-tensor SGD's, first step (the buffer starts as the gradient) on."""
    torch.manual_seed(0)
    model = build_model(
        "gcnn-small", 50, embed_dim=8, blocks=[{"layers": [[3, 8]]}], cutoffs=[9], dropout=0.0
    )
    twin = copy.deepcopy(model)
    config = TrainConfig(optimizer="nag", lr=0.5, momentum=0.99, weight_decay=0.01)
    fused = make_optimizer(model, config)
    assert fused.defaults["fused"] is True
    plain = torch.optim.SGD(
        twin.parameters(), lr=0.5, momentum=0.99, nesterov=True, weight_decay=0.01, foreach=False
    )
    x = torch.randint(0, 50, (2, 12))
    for _ in range(3):
        for m, opt in ((model, fused), (twin, plain)):
            nll, count, _ = m.loss(x[:, :-1], x[:, 1:])
            (nll / count).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
