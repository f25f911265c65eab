"""Score the policies' greedy responses: gold metrics, reward-model scores, each policy vs the baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.eval.gold import GoldPrompt


def gold_metrics(prompts: Sequence[GoldPrompt], responses: Sequence[str],
                 labeler: Sequence[float]) -> dict[str, Any]:
    """One policy's gold score (the simulated labeler's mean, `labeler` per response), constraint compliance,
    strict / instruction accuracy, pass rate per constraint type and length."""
    from align.eval.gold import score_batch

    gold = score_batch(prompts, responses)
    return {"gold_score": sum(labeler) / len(prompts), "compliance": gold["gold_score"],
            "strict_accuracy": gold["strict_accuracy"], "instruction_accuracy": gold["instruction_accuracy"],
            "pass_rate": gold["pass_rate"], "response_words_mean": sum(len(r.split()) for r in responses) / len(prompts)}


def per_prompt(score: Callable[[GoldPrompt, str], float], prompts: Sequence[GoldPrompt],
               responses: dict[str, list[str]]) -> dict[str, list[float]]:
    """score(prompt, response) of every response, per policy."""
    return {name: [score(p, r) for p, r in zip(prompts, texts)] for name, texts in responses.items()}


def reward_scores(reward_model, prompts: Sequence[GoldPrompt], responses: dict[str, list[str]]) -> dict[str, list[float]]:
    """The reward model's score of every response, per policy."""
    texts = [p.prompt for p in prompts]
    return {name: reward_model.score(texts, responses[name]) for name in responses}


def compare_to_baseline(prompts: Sequence[GoldPrompt], responses: dict[str, list[str]], baseline: str, *,
                        gold: dict[str, list[float]], compliance: dict[str, list[float]],
                        strict: dict[str, list[float]],
                        rm_scores: dict[str, list[float]], judge: str, llm_judge: Any,
                        seed: int) -> dict[str, dict[str, Any]]:
    """Every policy but the baseline against it, on the same prompts.

    gold_gain / compliance_gain / strict_gain: the mean per-prompt difference with a paired bootstrap 95% CI;
    win_rate_vs_<baseline> (and win_rate_detail): decided by the gold function, the reward model
    (`rm_scores`) or a position-swapped LLM judge (`llm_judge`: teacher settings).
    """
    from align.eval.bootstrap import paired_bootstrap
    from align.eval.winrate import pairwise_win_rate, win_rate

    judge_fn = _llm_judge(llm_judge) if judge == "llm" else None
    out: dict[str, dict[str, Any]] = {}
    for name in responses:
        if name == baseline:
            continue
        if judge == "gold":
            wr = win_rate(gold[name], gold[baseline])
        elif judge == "reward":
            wr = win_rate(rm_scores[name], rm_scores[baseline])
        else:
            wr = pairwise_win_rate(judge_fn, [p.prompt for p in prompts], responses[name], responses[baseline])
        out[name] = {"gold_gain": paired_bootstrap(gold[name], gold[baseline], seed=seed),
                     "compliance_gain": paired_bootstrap(compliance[name], compliance[baseline], seed=seed),
                     "strict_gain": paired_bootstrap(strict[name], strict[baseline], seed=seed),
                     "win_rate_vs_" + baseline: wr["win_rate"], "win_rate_detail": wr}
    return out


def _llm_judge(settings):
    """A position-swappable pairwise judge backed by a teacher (local model or OpenAI-compatible)."""
    from align.preferences.judges import pairwise_judge_fn
    from align.teachers import make_teacher

    return pairwise_judge_fn(make_teacher(settings.teacher))
