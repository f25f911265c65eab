"""The reward model: a scalar head on a causal LM or an encoder, its ranking loss, and loading it back.

Text format: causal bases read the conversation through their chat template (user prompt, then the
assistant response) and score it at the last non-padding token; encoders (BERT-style) read
"prompt [SEP] response" through the tokenizer's pair encoding and score the pooled [CLS]. A response
that spans several turns (an HH pair that differed before its last turn) is read as those turns: chat
messages for causal bases, "Human: ..."/"Assistant: ..." lines in the response segment for encoders.
Over-long inputs keep the end of the conversation in both formats (`encode`).

Training batches hold one element per prompt: all of that prompt's responses go through the model in
one forward pass (each response once), then the loss averages −log σ(r_better − r_worse) over that
prompt's pairs, and the prompts equally (InstructGPT, Ouyang et al. 2022, eq. 1), or, with
``loss: plackett_luce``, the listwise Plackett–Luce likelihood of the ranking (`plackett_luce_loss`).

Saved layout (``model/``): a PEFT adapter of a SEQ_CLS model (score head in the adapter) or a full
checkpoint, the tokenizer, ``align_reward.json`` {base, adapter, max_length, format} and
``reward_normalization.json`` {mean, std, n}: `RewardModel.score` subtracts ``mean`` so the SFT
samples score 0 on average, as InstructGPT does before RL.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from align.errors import AlignError
from align.preferences.rankings import PromptGroup, prompt_messages, response_messages

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TextFormat = Literal["chat", "pair"]
META_FILE = "align_reward.json"
NORM_FILE = "reward_normalization.json"
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


# --------------------------------------------------------------------------- text → tokens


def detect_format(model_dir: str) -> TextFormat:
    """'chat' for causal LMs (chat template), 'pair' for encoders (BERT-style pair encoding)."""
    path = Path(model_dir)
    if (path / "adapter_config.json").exists():
        path = Path(json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"])
    config = path / "config.json"
    if not config.exists():  # a hub id: ask transformers
        from transformers import AutoConfig

        archs = AutoConfig.from_pretrained(str(model_dir)).architectures or []
    else:
        archs = json.loads(config.read_text()).get("architectures") or []
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return "chat"
    if any(a.endswith(("Model", "ForMaskedLM", "ForPreTraining")) for a in archs):
        return "pair"
    return "chat"


def encode(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], response: str,
           text_format: TextFormat, max_length: int) -> dict[str, list[int]]:
    """Token ids of one (prompt, response), at most max_length long, truncated BEFORE padding or batching.

    chat: the conversation through the chat template; longer ones lose their BEGINNING (the score is
    read at the end of the response).
    pair: see `encode_pair`: the prompt keeps its latest turns, the response its start.
    A response spanning several turns (`align.preferences.rankings.response_messages`) is read as those turns.
    """
    if text_format == "pair":
        return encode_pair(tokenizer, pair_text(prompt), pair_text(response_messages(response)), max_length)
    ids = tokenizer(format_for_reward(tokenizer, prompt, response), add_special_tokens=False)["input_ids"]
    return {"input_ids": list(ids[-max_length:])}


def pair_text(messages: str | list[dict]) -> str:
    """Text of an encoder's segment: a single turn as is, several as role-labelled lines."""
    if isinstance(messages, str):
        return messages
    if len(messages) == 1:
        return messages[0]["content"]
    names = {"user": "Human", "assistant": "Assistant"}
    return "\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int,
                keep: Literal["latest", "earliest"] = "latest") -> dict[str, list[int]]:
    """'[CLS] prompt [SEP] response [SEP]' in at most max_length tokens.

    Over-long inputs are cut as the tokenizer's longest_first cuts them (the longer segment first, so a
    response keeps at least half the room), except WHERE the prompt is cut: keep="latest" (default)
    drops the START of the conversation and keeps the turns the response answers; "earliest" (the
    tokenizer's own right-side truncation) drops its end. The response always keeps its start.
    Needs a fast tokenizer (character offsets) for "latest"; slow ones fall back to "earliest".
    """
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    if keep == "latest" and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        n_prompt = len(enc["input_ids"])
        n_response = len(tokenizer(response, add_special_tokens=False)["input_ids"])
        if n_prompt + n_response > budget:
            keep_response = min(n_response, max(budget - n_prompt, budget // 2))
            keep_prompt = min(n_prompt, budget - keep_response)
            prompt = prompt[enc["offset_mapping"][n_prompt - keep_prompt][0] :] if keep_prompt else ""
    enc = tokenizer(prompt, response, truncation="longest_first", max_length=max_length)
    out = {"input_ids": list(enc["input_ids"])}
    if "token_type_ids" in enc:
        out["token_type_ids"] = list(enc["token_type_ids"])
    return out


def format_for_reward(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], response: str) -> str:
    """The text a causal reward model reads: the conversation, the response as the last assistant turn(s).

    Tokenize it with add_special_tokens=False; over-long texts keep their END (the saved tokenizer has
    truncation_side='left', so `tokenizer(text, truncation=True, max_length=N)` matches training).
    """
    messages = [*prompt_messages(prompt), *response_messages(response)]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def encode_group(tokenizer: PreTrainedTokenizerBase, group: PromptGroup, text_format: TextFormat,
                 max_length: int) -> dict[str, Any]:
    """One training element: every response of a prompt, tokenized once, plus its (better, worse) pairs."""
    return {
        "responses": [encode(tokenizer, group.prompt, r, text_format, max_length) for r in group.responses],
        "pairs": [list(p) for p in group.pairs],
        "k": group.k,
    }


def pad_rows(rows: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token rows into [N, L] tensors (seq-cls models score the last non-pad token)."""
    import torch

    length = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    has_types = "token_type_ids" in rows[0]
    token_type_ids = torch.zeros((len(rows), length), dtype=torch.long) if has_types else None
    for n, row in enumerate(rows):
        size = len(row["input_ids"])
        input_ids[n, :size] = torch.tensor(row["input_ids"])
        attention_mask[n, :size] = 1
        if has_types:
            token_type_ids[n, :size] = torch.tensor(row["token_type_ids"])
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if has_types:
        out["token_type_ids"] = token_type_ids
    return out


def collate_groups(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Prompt groups → one forward batch with one row per response, and pair indices into those rows.

    Returns input_ids/attention_mask [N, L] (N = total responses in the batch), better/worse [P]
    (row indices), pair_prompt [P] (which batch element each pair belongs to, 0..B-1).
    """
    import torch

    rows, better, worse, pair_prompt = [], [], [], []
    for b, feature in enumerate(features):
        offset = len(rows)
        rows.extend(feature["responses"])
        for hi, lo in feature["pairs"]:
            better.append(offset + hi)
            worse.append(offset + lo)
            pair_prompt.append(b)
    batch = pad_rows(rows, pad_token_id)
    if all("row_ids" in f for f in features):  # stable ids of the rows (align.frozen_trunk.TrunkCache's key)
        batch["row_ids"] = torch.tensor([i for f in features for i in f["row_ids"]], dtype=torch.long)
    batch["better"] = torch.tensor(better, dtype=torch.long)
    batch["worse"] = torch.tensor(worse, dtype=torch.long)
    batch["pair_prompt"] = torch.tensor(pair_prompt, dtype=torch.long)
    return batch


# --------------------------------------------------------------------------- the loss


def ranking_loss(rewards: torch.Tensor, better: torch.Tensor, worse: torch.Tensor, pair_prompt: torch.Tensor,
                 margin: float = 0.0) -> torch.Tensor:
    """InstructGPT's reward loss: per prompt, the mean over its pairs of −log σ(r_b − r_w − margin);
    then the mean over prompts, so a prompt with K = 9 (36 pairs) weighs as much as one with K = 2.

    rewards: [N] one scalar per response row; better, worse: [P] row indices; pair_prompt: [P] in 0..B-1.
    """
    import torch
    import torch.nn.functional as F

    pair_loss = -F.logsigmoid(rewards[better] - rewards[worse] - margin)  # [P]
    n_prompts = int(pair_prompt.max()) + 1
    per_prompt = torch.zeros(n_prompts, dtype=pair_loss.dtype, device=pair_loss.device)
    per_prompt = per_prompt.index_add(0, pair_prompt, pair_loss)
    counts = torch.zeros(n_prompts, dtype=pair_loss.dtype, device=pair_loss.device)
    counts = counts.index_add(0, pair_prompt, torch.ones_like(pair_loss))
    present = counts > 0
    return (per_prompt[present] / counts[present]).mean()


def plackett_luce_loss(rewards: torch.Tensor, better: torch.Tensor, worse: torch.Tensor,
                       pair_prompt: torch.Tensor) -> torch.Tensor:
    """Listwise Plackett–Luce loss, from the same (better, worse) index pairs as `ranking_loss`.

    PL reads a ranking as choosing the best remaining response, again and again: with no ties,
    −log P(ranking) = Σ_i [logsumexp(r_j : j not ranked above i) − r_i]. Ties: response i's term
    uses i and the responses strictly below it, never its tie-mates, i.e. the PL term i would get
    if it were picked last in its tie group. Why this and not breaking ties at random or Breslow's
    approximation (which pulls tied rewards together): it asks exactly what the pairwise loss asks
    of a tie (nothing), it needs no random choice, and it reduces to plain PL without ties and to
    −log σ(r_b − r_w) for K = 2. The set below i is read from the pairs: {w : (i, w) is a pair}, so
    rankings merged from several records (e.g. HH pairs sharing a prompt) work as well.
    Each response with something below it gives one term; terms are averaged per prompt (K − 1
    terms for a full order) and prompts weigh equally, as in `ranking_loss`.

    rewards: [N] one scalar per response row; better, worse: [P] row indices (unique pairs);
    pair_prompt: [P] in 0..B-1. Returns a scalar.
    """
    import torch

    heads, slot_of_pair = torch.unique(better, return_inverse=True)  # [H] rows with something below them
    n_heads, n_pairs = len(heads), len(better)
    counts = torch.bincount(slot_of_pair, minlength=n_heads)  # [H] responses below each head
    order = torch.argsort(slot_of_pair, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    column = torch.empty_like(slot_of_pair)
    column[order] = torch.arange(n_pairs, device=better.device) - starts[slot_of_pair[order]]
    # [H, 1 + max below]: the head's reward, then those of the responses below it, −inf padding
    table = torch.full((n_heads, 1 + int(counts.max())), float("-inf"), dtype=rewards.dtype, device=rewards.device)
    table = table.index_put((torch.arange(n_heads, device=better.device), torch.zeros_like(heads)), rewards[heads])
    table = table.index_put((slot_of_pair, column + 1), rewards[worse])
    terms = torch.logsumexp(table, dim=1) - rewards[heads]  # [H] −log P(head chosen over everything below it)
    head_prompt = torch.zeros(n_heads, dtype=pair_prompt.dtype, device=pair_prompt.device)
    head_prompt = head_prompt.scatter(0, slot_of_pair, pair_prompt)
    n_prompts = int(pair_prompt.max()) + 1
    per_prompt = torch.zeros(n_prompts, dtype=terms.dtype, device=terms.device).index_add(0, head_prompt, terms)
    n_terms = torch.zeros(n_prompts, dtype=terms.dtype, device=terms.device).index_add(
        0, head_prompt, torch.ones_like(terms))
    present = n_terms > 0
    return (per_prompt[present] / n_terms[present]).mean()


def pair_metrics(rewards: list[list[float]], groups: list[PromptGroup]) -> dict[str, Any]:
    """Pairwise accuracy (ties in reward count half), accuracy by K, mean margin r_b − r_w, over all pairs.

    `accuracy_ci` is a 95% interval from resampling prompts (eval.bootstrap.prompt_bootstrap_accuracy): a
    few dozen held-out prompts give an accuracy that moves by ±0.1 with which prompts were held out.
    """
    from align.eval.bootstrap import prompt_bootstrap_accuracy

    correct, margins, by_k = 0.0, [], {}
    all_ordered, per_prompt = [], []
    for scores, group in zip(rewards, groups):
        if not group.pairs:
            continue
        right = [1.0 if scores[b] > scores[w] else 0.5 if scores[b] == scores[w] else 0.0 for b, w in group.pairs]
        per_prompt.append((sum(right), len(right)))
        correct += sum(right)
        margins.extend(scores[b] - scores[w] for b, w in group.pairs)
        stats = by_k.setdefault(group.k, [0.0, 0])
        stats[0] += sum(right)
        stats[1] += len(right)
        all_ordered.append(all(r == 1.0 for r in right))
    n = len(margins)
    ci = prompt_bootstrap_accuracy([c for c, _ in per_prompt], [k for _, k in per_prompt]) if n else None
    return {
        "accuracy": round(correct / n, 4) if n else None,
        "accuracy_ci": [round(ci["ci_low"], 4), round(ci["ci_high"], 4)] if ci else None,
        "pairs": n,
        "prompts": len(per_prompt),
        "accuracy_by_k": {str(k): round(c / t, 4) for k, (c, t) in sorted(by_k.items())},
        "mean_margin": round(sum(margins) / n, 4) if n else None,
        "fully_ordered": round(sum(all_ordered) / len(all_ordered), 4) if all_ordered else None,
    }


# --------------------------------------------------------------------------- scoring + loading


@dataclass
class RewardModel:
    """A trained reward model: `score` is normalized (SFT samples average 0), `score_raw` is the head's output."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    text_format: TextFormat = "chat"
    max_length: int = 512
    mean: float = 0.0
    std: float = 1.0

    def score_raw(self, prompts: list[str | list[dict]], responses: list[str], batch_size: int = 8) -> list[float]:
        import torch

        if len(prompts) != len(responses):
            raise AlignError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                rows = [encode(self.tokenizer, p, r, self.text_format, self.max_length)
                        for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]
                batch = {k: v.to(device) for k, v in pad_rows(rows, self.tokenizer.pad_token_id).items()}
                out.extend(self.model(**batch).logits[:, 0].float().tolist())
        self.model.train(was_training)
        return out

    def score(self, prompts: list[str | list[dict]], responses: list[str], batch_size: int = 8) -> list[float]:
        return [r - self.mean for r in self.score_raw(prompts, responses, batch_size)]

    def score_groups(self, groups: list[PromptGroup], batch_size: int = 8) -> list[list[float]]:
        """Raw rewards of every response of every prompt group."""
        flat_p = [g.prompt for g in groups for _ in g.responses]
        flat_r = [r for g in groups for r in g.responses]
        flat = self.score_raw(flat_p, flat_r, batch_size)
        out, at = [], 0
        for g in groups:
            out.append(flat[at : at + len(g.responses)])
            at += len(g.responses)
        return out


def normalization_stats(raw_scores: list[float]) -> dict[str, float]:
    """Mean/std of raw rewards over the SFT samples: score = raw − mean centres them at 0."""
    n = len(raw_scores)
    if n == 0:
        raise AlignError("reward normalization: no responses to score")
    mean = sum(raw_scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in raw_scores) / n)
    return {"mean": mean, "std": std, "n": n}


def find_reward_dir(path: str | Path) -> Path:
    """A reward model dir, or a reward stage dir holding model/."""
    path = Path(path).expanduser()
    for candidate in (path, path / "model"):
        if (candidate / META_FILE).exists():
            return candidate
    for candidate in (path, path / "model"):
        if (candidate / "config.json").exists() or (candidate / "adapter_config.json").exists():
            return candidate
    raise AlignError(f"{path}: no reward model here (expected {META_FILE}, config.json or adapter_config.json, "
                     "or a model/ subfolder)")


@dataclass
class SavedRewardModel:
    """What a reward model folder says about itself: where its base is, its format and normalization."""

    folder: Path
    meta: dict[str, Any]
    adapter: bool
    base: str
    norm: dict[str, Any]

    def tokenizer(self):
        """The tokenizer saved with the model (else its base's), with a pad token."""
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        except (OSError, ValueError):
            tokenizer = AutoTokenizer.from_pretrained(self.base)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def wrap(self, model, tokenizer) -> RewardModel:
        """A loaded model as a RewardModel, with this folder's text format, max length and normalization."""
        model.config.pad_token_id = tokenizer.pad_token_id
        model.eval()
        text_format = self.meta.get("format") or detect_format(self.base if self.adapter else str(self.folder))
        return RewardModel(model, tokenizer, text_format, int(self.meta.get("max_length", 512)),
                           float(self.norm.get("mean", 0.0)), float(self.norm.get("std", 1.0)))


def read_saved_reward_model(path: str | Path) -> SavedRewardModel:
    """A reward model dir (or a reward stage dir holding model/), read without loading weights."""
    folder = find_reward_dir(path)
    meta_path, norm_path = folder / META_FILE, folder / NORM_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    adapter_cfg = folder / "adapter_config.json"
    adapter = meta.get("adapter", adapter_cfg.exists())
    base = meta.get("base") or (json.loads(adapter_cfg.read_text())["base_model_name_or_path"] if adapter else str(folder))
    norm = json.loads(norm_path.read_text()) if norm_path.exists() else {}
    return SavedRewardModel(folder, meta, adapter, base, norm)


def load_reward_model(path: str | Path, *, dtype: str = "float32") -> RewardModel:
    """Load a saved reward model with plain transformers (+ peft for adapters)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    saved = read_saved_reward_model(path)
    folder, meta, adapter, base = saved.folder, saved.meta, saved.adapter, saved.base
    torch_dtype = getattr(torch, dtype)
    tokenizer = saved.tokenizer()
    kwargs: dict[str, Any] = {"num_labels": 1, "dtype": torch_dtype}
    if adapter and meta.get("quantization", "none") != "none":  # QLoRA: score on the same 4/8-bit base it trained on
        from align.models import quantization_config

        kwargs["quantization_config"] = quantization_config(meta["quantization"], torch_dtype)
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    try:
        if adapter:
            from peft import PeftModel

            model = AutoModelForSequenceClassification.from_pretrained(base, **kwargs)
            model.config.pad_token_id = tokenizer.pad_token_id
            model = PeftModel.from_pretrained(model, str(folder))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1, dtype=torch_dtype)
    except OSError as exc:
        raise AlignError(f"cannot load reward model from {folder} (base {base}): {exc}") from exc
    if torch.cuda.is_available() and "device_map" not in kwargs:
        model = model.to("cuda")
    return saved.wrap(model, tokenizer)
