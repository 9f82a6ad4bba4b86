"""Text generation with temperature, top-k and nucleus (top-p) sampling.

Generation runs through the model's incremental state (``init_state`` / ``step``): a GCNN keeps
the last k−1 inputs of every convolution, an LSTM its (h, c), so each new token costs the same
however long the prefix is. ``incremental=False`` recomputes the whole prefix for every token
instead; it exists to check the incremental path (same seed → same tokens) and for benchmarks.

Each token is drawn by inverse-CDF sampling with one uniform number from a seeded generator, in
float64 on the host: the two paths then pick the same token whenever their probabilities agree to
rounding, which a multinomial kernel on a device would not promise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gcnn.errors import GcnnError
from gcnn.memory import require_memory

PROMPT_CHUNK = 512  # prompt tokens fed per call


@dataclass
class SamplingConfig:
    max_tokens: int = 50
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1 = no nucleus filter
    seed: int = 0
    stop_at_eos: bool = False

    def validate(self) -> None:
        if self.max_tokens < 0:
            raise GcnnError(f"--max-tokens {self.max_tokens}: must be >= 0")
        if self.temperature < 0:
            raise GcnnError(f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise GcnnError(f"--top-k {self.top_k}: must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise GcnnError(f"--top-p {self.top_p}: must be in (0, 1] (1 = off)")


def choose_token(
    log_probs: torch.Tensor, config: SamplingConfig, generator: torch.Generator
) -> int:
    """Pick the next token id from a (V,) vector of log-probabilities."""
    # one uniform per token, drawn even when greedy, so every setting advances the RNG alike
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    logits = log_probs.detach().to("cpu", torch.float64)
    if config.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / config.temperature
    # sort once by descending probability (stable: ties keep id order, identical in both paths)
    order = torch.argsort(logits, descending=True, stable=True)
    sorted_logits = logits[order]
    if config.top_k > 0:
        sorted_logits = sorted_logits[: config.top_k]
    probs = torch.softmax(sorted_logits, dim=0)
    if config.top_p < 1:
        # smallest prefix whose mass reaches top_p (always at least one token)
        cumulative = torch.cumsum(probs, dim=0)
        keep = int(torch.searchsorted(cumulative, torch.tensor(config.top_p, dtype=torch.float64)))
        probs = probs[: keep + 1]
    cdf = torch.cumsum(probs, dim=0)
    index = int(torch.searchsorted(cdf, torch.tensor(u * float(cdf[-1]), dtype=torch.float64)))
    return int(order[min(index, len(cdf) - 1)])


@torch.inference_mode()
def sample(
    model: torch.nn.Module,
    prompt: Sequence[int],
    eos_id: int,
    config: SamplingConfig,
    *,
    incremental: bool = True,
    device: str | torch.device = "cpu",
) -> list[int]:
    """Generate up to `config.max_tokens` ids after `prompt` (which follows a leading <eos>)."""
    config.validate()
    # the ids generated (a Python int and a list slot each) and their text: a lower bound
    require_memory(40 * config.max_tokens, f"--max-tokens {config.max_tokens:,}",
                   "lower --max-tokens")  # fmt: skip
    model.eval()
    generator = torch.Generator().manual_seed(config.seed)
    history = [eos_id, *prompt]
    out: list[int] = []
    if incremental:
        # the prompt in chunks with a state (the same as feeding it token by token): memory
        # does not grow with the prompt's length
        state = model.init_state(1, device)
        for start in range(0, len(history), PROMPT_CHUNK):
            chunk = torch.tensor([history[start : start + PROMPT_CHUNK]], device=device)
            hidden, state = model(chunk, state)
        log_probs = model.softmax.log_prob(hidden[:, -1])
        for _ in range(config.max_tokens):
            token = choose_token(log_probs[0], config, generator)
            out.append(token)
            if (config.stop_at_eos and token == eos_id) or len(out) == config.max_tokens:
                break
            log_probs, state = model.step(torch.tensor([token], device=device), state)
    else:
        for _ in range(config.max_tokens):
            inputs = torch.tensor([history + out], device=device)
            log_probs = model.next_token_log_probs(inputs)[0, -1]
            token = choose_token(log_probs, config, generator)
            out.append(token)
            if config.stop_at_eos and token == eos_id:
                break
    return out
