"""Queries for rollouts: prompts from any data source (align.data.load_prompts), and a deterministic
sampler over them."""

from __future__ import annotations

import random

from align.data import DataConfig, load_prompts
from align.errors import AlignError

Conversation = list[dict]


def load_queries(cfg: DataConfig | str) -> list[Conversation]:
    """Every prompt of a data source as a conversation ending with a user message (see align.data.load_prompts)."""
    return load_prompts(cfg)


def last_user_message(conversation: Conversation) -> str:
    """The text a programmatic reward sees as `prompt`."""
    return next(m["content"] for m in reversed(conversation) if m["role"] == "user")


class QuerySampler:
    """Batches of prompt indices: shuffled once per pass with (seed, pass), so step N's batch is
    the same in a resumed run as in an uninterrupted one, with no RNG state to carry."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n == 0:
            raise AlignError("ppo: no prompts to sample from")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(self.n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}  # keep one pass in memory
        return self._orders[epoch]

    def indices(self, step: int, rank: int = 0, world: int = 1) -> list[int]:
        """Prompt indices for PPO step `step` (0-based): the whole batch, or with `world` processes
        process `rank`'s contiguous share of it (the shards, in rank order, are the whole batch)."""
        if self.batch_size % world:
            raise AlignError(f"ppo: {self.batch_size} queries per step (ppo.train.rollout.batch_size / group_size) must be "
                             f"a multiple of the world size ({world})")
        share = self.batch_size // world
        out: list[int] = []
        start = step * self.batch_size + rank * share
        for pos in range(start, start + share):
            epoch, offset = divmod(pos, self.n)
            out.append(self._order(epoch)[offset])
        return out
