"""One PPO update on a batch of rollouts: rewards -> advantages -> ppo_epochs of clipped updates.

Advantages come from GAE with the value model, or critic-free from the other samples of the same
query (rloo, grpo). Losses are token-level means over each optimizer batch (mini_batch_size *
grad_accum rollouts) unless ppo.train.loss_aggregation says otherwise. A micro-batch's loss is weighted
by its share of the optimizer batch (of response tokens, or of rollouts for per-response and
constant aggregation), so 8 rollouts x 1 micro-batch and 4 x 2 accumulated give the same gradient.

With N processes (align.ppo.distributed) every process holds the same global rollouts; each runs
mini_batch_size / N rows of every micro-batch, weighted by the optimizer batch's global token
count, and gradients are summed over processes before clipping: the same update as one process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from align.divergence import describe, is_finite
from align.errors import AlignError, TrainingDiverged
from align.ppo import distributed
from align.ppo.config import PPOSettings
from align.ppo.policy import ModelRoles, policy_forward
from align.ppo.rollout import Rollouts
from align.rl import (
    broadcast_to_tokens,
    compute_gae,
    entropy_from_logits,
    grpo_advantages,
    kl_loss,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    sequence_returns,
    shape_rewards,
    whiten_advantages,
)


@dataclass
class Advantages:
    rewards: torch.Tensor  # (B, R) shaped per-token rewards
    kl: torch.Tensor  # (B, R) per-token KL estimate (kl_estimator), whether or not it is in the reward
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R) value targets (gae); each rollout's return on its tokens (rloo, grpo)
    whitened: bool = False
    kl_coef: float = 0.0  # beta of this step
    flat_groups: float = 0.0  # share of query groups whose samples all scored the same (rloo, grpo)


def estimate_advantages(r: Rollouts, kl_coef: float, s: PPOSettings) -> Advantages:
    """Score at the last token, -beta * KL on every token (unless the KL is a loss term), then
    GAE with the value model, or one advantage per rollout from its query group (rloo, grpo)."""
    mask = r.response_mask
    in_reward = kl_coef if s.kl_penalty == "reward" else 0.0
    rewards, kl = shape_rewards(r.scores, r.logprobs, r.ref_logprobs, mask, in_reward, s.kl.estimator)
    if s.advantage.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
    # A batch whose scores are all equal (common with 0/1 programmatic rewards) carries no preference
    # signal: its advantages are only value-model error and KL noise, and whitening would blow that
    # noise up to unit scale and take a full-size step on it.
    varied = bool(r.scores.max() - r.scores.min() > 1e-8)
    flat = 0.0
    if s.advantage.estimator == "gae":
        advantages, returns = compute_gae(rewards, r.values, mask, s.advantage.gamma, s.advantage.lam)
        whiten = s.advantage.whiten_advantages and varied
    else:
        seq_returns = sequence_returns(rewards, mask)  # score - beta * sum of KL (gamma = 1)
        if s.advantage.estimator == "rloo":
            per_rollout = rloo_advantages(seq_returns, s.rollout.group_size)
        else:
            per_rollout = grpo_advantages(seq_returns, s.rollout.group_size, scale=not s.advantage.dr_grpo,
                                          scores=r.scores)  # flat-score groups: not scaled up to unit size
        advantages = broadcast_to_tokens(per_rollout, mask)
        returns = broadcast_to_tokens(seq_returns, mask)
        whiten = s.advantage.estimator == "rloo" and s.advantage.whiten_advantages and varied
        groups = r.scores.view(-1, s.rollout.group_size)
        flat = float(((groups.max(dim=1).values - groups.min(dim=1).values) <= 1e-8).float().mean())
    if whiten:
        advantages = whiten_advantages(advantages, mask)
    return Advantages(rewards, kl, advantages, returns, whitened=whiten, kl_coef=kl_coef, flat_groups=flat)


class PtxBatches:
    """PPO-ptx: demonstrations tokenised once, drawn in micro-batches for an SFT log-likelihood term."""

    def __init__(self, tokenizer, examples: list[dict], max_length: int, seed: int) -> None:
        from align.errors import AlignError

        self.rows: list[tuple[list[int], int]] = []  # (ids, number of prompt tokens)
        for ex in examples:
            prompt = tokenizer.apply_chat_template(ex["prompt"], add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
            if not full.startswith(prompt):  # templates that re-render earlier turns: fall back to concatenation
                full = prompt + ex["completion"][0]["content"] + (tokenizer.eos_token or "")
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
            if len(ids) > n_prompt:
                self.rows.append((ids, n_prompt))
        if not self.rows:
            raise AlignError(f"ppo: no ptx example has a completion within ptx_max_length={max_length} tokens")
        self.pad_id, self.seed = tokenizer.pad_token_id, seed

    def sample(self, n: int, key: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n examples chosen by a generator seeded with key (deterministic across resumes)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        picks = torch.randint(len(self.rows), (n,), generator=g).tolist()
        width = max(len(self.rows[i][0]) for i in picks)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        for row, i in enumerate(picks):
            seq, n_prompt = self.rows[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            labels[row, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
        return ids, mask, labels


def ptx_loss(roles: ModelRoles, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the demonstration's response tokens under the policy."""
    with roles.autocast():
        logits = roles.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    targets = labels[:, 1:]
    valid = targets != -100
    logp = logprobs_from_logits(logits, targets.clamp(min=0))
    return -masked_mean(logp, valid)


def rows_per_process(s: PPOSettings, world: int) -> int:
    """Rollouts one process runs per micro-batch. batch_size and mini_batch_size count rollouts over
    all processes, so a recipe means the same on 1 or N of them; both must split evenly, and so must
    the step's queries: a query's group of samples is rolled out on one process."""
    if world > 1:
        bad = [f"ppo.train.{key} ({value})" for key, value in (("rollout.batch_size", s.rollout.batch_size),
                                                                ("mini_batch_size", s.mini_batch_size)) if value % world]
        if bad:
            raise AlignError(
                f"ppo: {' and '.join(bad)} must be a multiple of the world size ({world} processes): both count "
                f"rollouts over all processes; each process rolls out batch_size / {world} queries and runs "
                f"mini_batch_size / {world} rollouts per forward/backward pass"
            )
        if s.queries_per_step % world:
            raise AlignError(
                f"ppo: rollout.batch_size / rollout.group_size = {s.queries_per_step} queries per step must be a "
                f"multiple of the world size ({world} processes): each process samples whole groups of "
                f"{s.rollout.group_size}"
            )
    return s.mini_batch_size // world


def check_update(update_stats: dict[str, float], grad_norm: torch.Tensor, update: int) -> None:
    """Raise TrainingDiverged if this optimizer batch's loss or gradient norm is NaN/inf.

    Checked after the all-reduce, so every process sees the same numbers and stops at the same update.
    """
    where = f"in optimizer update {update} of the step"
    for key in ("loss/total", "loss/ptx"):
        if not is_finite(update_stats.get(key)):
            name = "PPO-ptx loss" if key == "loss/ptx" else "loss"
            raise TrainingDiverged(f"{name} is {describe(update_stats[key])} {where}")
    if not is_finite(grad_norm):
        raise TrainingDiverged(f"gradient norm is {describe(float(grad_norm))} {where}")


def micro_batch_loss(roles: ModelRoles, r: Rollouts, adv: Advantages, rows: torch.Tensor, s: PPOSettings,
                     value_scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective on one micro-batch of rollouts `rows`: clipped policy loss + value loss
    + beta * KL (kl.penalty: loss) - entropy bonus, and its stats (tensors, detached).

    `value_scale` re-weights the value loss, which is always a token mean, where the caller weights
    the whole loss by something else than this micro-batch's share of response tokens.
    """
    device = roles.device
    ids, attn, width = r.inputs(rows)
    ids, attn = ids.to(device), attn.to(device)
    mask = r.response_mask[rows, :width].to(device)
    old_logprobs = r.logprobs[rows, :width].to(device)
    advantages = adv.advantages[rows, :width].to(device)

    logits, values = policy_forward(roles, ids, attn, width, trunk=r.trunk_rows(rows))
    logprobs = logprobs_from_logits(logits, ids[:, -width:], s.rollout.temperature)
    loss, pg_stats = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, s.cliprange,
                                     s.aggregation, s.rollout.max_new_tokens)
    stats = dict(pg_stats)
    if values is not None:  # gae: the value model's clipped regression on the returns
        old_values = r.values[rows, :width].to(device)
        returns = adv.returns[rows, :width].to(device)
        vf_loss, vf_stats = ppo_value_loss(values.float(), old_values, returns, mask, s.value.cliprange)
        loss = loss + s.value.coef * vf_loss * value_scale
        stats.update(vf_stats)
    if s.kl_penalty == "loss" and adv.kl_coef > 0:  # GRPO: beta * k3 KL to the ref_policy
        ref_logprobs = r.ref_logprobs[rows, :width].to(device)
        kl_term = kl_loss(logprobs, ref_logprobs, mask, s.aggregation, s.rollout.max_new_tokens)
        loss = loss + adv.kl_coef * kl_term
        stats["loss/kl"] = kl_term.detach()
    with torch.set_grad_enabled(s.entropy_coef > 0):  # a stat only, unless it is a bonus
        entropy = masked_mean(entropy_from_logits(logits, s.rollout.temperature), mask)
    loss = loss - s.entropy_coef * entropy
    stats.update({"policy/entropy": entropy.detach(), "loss/total": loss.detach()})
    return loss, stats


def accumulate_gradients(roles: ModelRoles, r: Rollouts, adv: Advantages, group: torch.Tensor, s: PPOSettings,
                         ptx: PtxBatches | None, ptx_key: int) -> dict[str, float]:
    """Backward passes over the micro-batches of one optimizer batch `group`, on this process's rows;
    returns their stats, each weighted by its micro-batch's share of the optimizer batch.

    A micro-batch's loss is weighted by its share of the optimizer batch's response tokens (token
    aggregation) or of its rollouts, so accumulation gives the gradient of the whole batch at once.
    `ptx_key` numbers this optimizer batch for drawing PPO-ptx demonstrations.
    """
    world, rank = distributed.world_size(), distributed.rank()
    local = rows_per_process(s, world)
    n_tokens = r.response_mask[group].sum().clamp(min=1)
    stats: dict[str, float] = defaultdict(float)
    for m in range(s.grad_accum):
        lo = m * s.mini_batch_size + rank * local  # this process's share of the micro-batch
        rows = group[lo : lo + local]
        token_share = float(r.response_mask[rows].sum() / n_tokens)
        weight = token_share if s.aggregation == "token" else len(rows) / len(group)
        # the value loss is a token mean under every aggregation: its weight stays the token share
        loss, micro_stats = micro_batch_loss(roles, r, adv, rows, s, token_share / weight if weight else 0.0)
        (loss * weight).backward()
        for k, v in micro_stats.items():
            stats[k] += float(v) * weight
        if ptx is not None and s.ptx.coef > 0:  # InstructGPT's PPO-ptx: + gamma * log-likelihood
            p_ids, p_mask, p_labels = (t.to(roles.device) for t in ptx.sample(len(rows), (ptx_key + m) * world + rank))
            nll = ptx_loss(roles, p_ids, p_mask, p_labels)
            (s.ptx.coef * nll / (s.grad_accum * world)).backward()
            stats["loss/ptx"] += float(nll.detach()) / (s.grad_accum * world)
    return stats


def optimizer_batches(n: int, per_update: int, epochs: int, seed: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, index in the epoch, rollout indices) of each optimizer batch: every epoch a fresh shuffle
    of the n rollouts, from a generator seeded with `seed` (the same shuffles on resume)."""
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g)
        for u, start in enumerate(range(0, n, per_update)):
            yield epoch, u, order[start : start + per_update]


def step_with_rollouts(
    roles: ModelRoles,
    optimizer: torch.optim.Optimizer,
    r: Rollouts,
    adv: Advantages,
    s: PPOSettings,
    seed: int,
    step: int,
    ptx: PtxBatches | None = None,
) -> dict[str, float]:
    """ppo_epochs passes over the rollouts in shuffled optimizer batches; returns mean stats.

    Under several processes `r` must be the global batch (see distributed.gather_rollouts), the
    same on every process.
    """
    params = roles.trainable_parameters()
    B = len(r)
    per_update = s.mini_batch_size * s.grad_accum
    world = distributed.world_size()
    rows_per_process(s, world)  # rejects batch sizes that do not split over the processes
    if world > 1 and B % per_update:
        raise AlignError(f"ppo: {B} rollouts do not split into optimizer batches of ppo.train.mini_batch_size * "
                         f"ppo.train.grad_accum = {per_update} (needed with {world} processes)")
    totals: dict[str, float] = defaultdict(float)
    n_updates = 0
    for epoch, u, group in optimizer_batches(B, per_update, s.ppo_epochs, seed * 1_000_003 + step):
        optimizer.zero_grad(set_to_none=True)
        ptx_key = ((step * s.ppo_epochs + epoch) * 10_000 + u) * 100
        update_stats = accumulate_gradients(roles, r, adv, group, s, ptx, ptx_key)
        if world > 1:  # sums: each process's weights already divide by the global token count
            distributed.reduce_gradients(params)
            update_stats = defaultdict(float, distributed.all_reduce_stats(update_stats))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        check_update(update_stats, grad_norm, n_updates + 1)  # before the step: the weights stay the last finite ones
        optimizer.step()
        update_stats["policy/grad_norm"] = float(grad_norm)
        for k, v in update_stats.items():
            totals[k] += v
        n_updates += 1
        if s.max_approxkl is not None and update_stats["policy/approxkl"] > s.max_approxkl:
            break  # the policy already moved far from the rollouts' policy: stop this step
    optimizer.zero_grad(set_to_none=True)
    stats = {k: v / n_updates for k, v in totals.items()}
    stats["policy/updates"] = float(n_updates)
    return stats
