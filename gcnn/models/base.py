"""LanguageModel: what every model in gcnn offers to training, evaluation and users.

A subclass defines `forward(inputs, state) -> (hidden, state)`, `init_state`, `detach_state` and
`config_dict`, and owns an AdaptiveSoftmax as `self.softmax`; everything that turns hidden states
into probabilities lives here, so both families score text the same way.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from gcnn.data import IGNORE_INDEX
from gcnn.errors import GcnnError
from gcnn.models.adaptive_softmax import AdaptiveSoftmax, TiedEmbedding
from gcnn.models.dropout import Dropout


class LanguageModel(nn.Module):
    family: str = ""
    is_recurrent: bool = False
    softmax: nn.Module
    embed: nn.Module  # ids -> word vectors: an nn.Embedding, or a TiedEmbedding

    @property
    def receptive_field(self) -> int | None:
        return None

    def config_dict(self) -> dict:
        """Plain types only: `model_from_config(model.config_dict())` rebuilds the model."""
        return dataclasses.asdict(self.config)

    def make_softmax(self, in_features: int) -> AdaptiveSoftmax:
        """The output layer both families share, from the config's softmax fields.

        With `tie_embeddings` it also becomes the input embedding (`self.embed`, a TiedEmbedding),
        which needs word vectors as wide as the softmax's input (config.softmax_input).
        """
        c = self.config
        if c.tie_embeddings and in_features != c.embed_dim:
            raise GcnnError(
                f"model option tie_embeddings needs embed_dim={c.embed_dim} equal to the "
                f"softmax's input size softmax_dim={in_features}; leave softmax_dim unset"
            )
        softmax = AdaptiveSoftmax(
            in_features,
            c.vocab_size,
            c.cutoffs,
            dropout=c.softmax_dropout,
            tail_factor=c.tail_factor,
        )
        if c.tie_embeddings:
            self.embed = TiedEmbedding(softmax)
        return softmax

    def init_state(self, batch_size: int, device=None):
        raise NotImplementedError

    def detach_state(self, state):
        raise NotImplementedError

    def plan(self, targets):
        """The adaptive-softmax plan of `targets`, made on the host (see SoftmaxPlan)."""
        return self.softmax.plan(targets)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, state=None, plan=None):
        """(summed NLL in fp32 over targets != IGNORE_INDEX, number of such targets, new state).

        Sum rather than mean so that gradient accumulation and data-parallel ranks can divide by
        the global token count. Adaptive-softmax tails run only for the targets that need them;
        `plan` (`self.softmax.plan(targets)`, made on the host and moved to the device) saves
        the forward pass from working that out on the device.
        """
        hidden, state = self(inputs, state)
        log_probs = self.softmax.target_log_prob(hidden, targets, plan)
        count = (targets != IGNORE_INDEX).sum()
        return -log_probs.sum(), count, state

    def token_log_probs(self, inputs: torch.Tensor, targets: torch.Tensor, plan=None):
        """(B, T) log p(targets[:, t] | inputs[:, :t+1]) in fp32; 0 where IGNORE_INDEX."""
        hidden, _ = self(inputs)
        return self.softmax.target_log_prob(hidden, targets, plan)

    def next_token_log_probs(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, T, V) fp32: the full next-word distribution after every prefix inputs[:, :t+1]."""
        hidden, _ = self(inputs)
        return self.softmax.log_prob(hidden)

    def step(self, tokens: torch.Tensor, state):
        """Incremental decoding: tokens (B,) -> (log-probs (B, V) of the next word, new state).

        `state` comes from `init_state` or the previous step; None starts a new text.
        """
        if state is None:
            state = self.init_state(tokens.size(0), tokens.device)
        hidden, state = self(tokens.unsqueeze(1), state)
        return self.softmax.log_prob(hidden[:, 0]), state

    def set_dropout(self, on: bool) -> None:
        """Switch every dropout of the model on (its configured rates) or off, in training mode
        too: late dropout (TrainConfig.dropout_from_epoch) trains the first epochs without it.
        The initialisation, scaled by the configured rate (fairseq's), is left as it was."""
        for module in self.modules():
            if isinstance(module, Dropout):
                module.switch(on)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def remove_weight_norm(self) -> LanguageModel:
        """Fold weight normalisation into plain weights (same outputs, faster inference)."""
        for module in list(self.modules()):
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        return self
