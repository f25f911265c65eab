"""PPO rewards as weighted sums: a source (reward model or function) plus verifiable functions."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from align.config import load_recipe
from align.ppo.config import RewardConfig, RewardTerm
from align.ppo.scoring import FunctionScorer, WeightedSumScorer, load_scorer

REPO = Path(__file__).resolve().parents[2]
QUERIES = [[{"role": "user", "content": "say hi"}], [{"role": "user", "content": "say bye"}]]
RESPONSES = ["hello there", "bye"]


class Roles:
    """All load_scorer needs from the model roles when every part is a function."""

    def __init__(self):
        self.notes: list[str] = []


@pytest.fixture()
def specs(tmp_path) -> tuple[str, str]:
    (tmp_path / "fns.py").write_text(
        "def n_words(prompt, response):\n    return len(response.split())\n\n"
        "def n_e(prompt, response):\n    return response.count('e')\n")
    return f"{tmp_path / 'fns.py'}:n_words", f"{tmp_path / 'fns.py'}:n_e"


def test_reward_settings_validate_terms():
    cfg = RewardConfig.model_validate(
        {"source": "@reward", "functions": [{"function": "align.eval.labeler:gold_score_fn", "weight": 0.5}]})
    assert cfg.weight == 1.0 and cfg.functions == [RewardTerm(function="align.eval.labeler:gold_score_fn", weight=0.5)]
    assert RewardConfig.model_validate("@reward").functions == []  # the string shorthand still works
    with pytest.raises(ValidationError, match="expected 'module:function'"):
        RewardConfig.model_validate({"source": "@reward", "functions": [{"function": "not a function"}]})
    with pytest.raises(ValidationError, match="fn"):
        RewardConfig.model_validate({"source": "@reward", "functions": [{"fn": "a:b"}]})
    with pytest.raises(ValidationError, match="finite"):
        RewardConfig.model_validate({"source": "@reward", "weight": float("nan")})
    for model in (RewardConfig, RewardTerm):
        assert all(field.description for field in model.model_fields.values()), model.__name__


def test_weighted_sum_of_source_and_functions(specs):
    n_words, n_e = specs
    roles = Roles()
    cfg = RewardConfig(source=n_words, weight=2.0, functions=[RewardTerm(function=n_e, weight=-0.5)])
    scorer = load_scorer(cfg, n_words, roles)
    assert isinstance(scorer, WeightedSumScorer)
    # "hello there": 2 words, 3 e's → 2·2 − 0.5·3 = 2.5;  "bye": 1 word, 1 e → 2·1 − 0.5·1 = 1.5
    assert scorer.score(QUERIES, RESPONSES) == [2.5, 1.5]
    assert roles.notes[-1] == f"reward = 2 * {n_words} + -0.5 * {n_e}"


def test_plain_source_is_not_wrapped(specs):
    n_words, _ = specs
    scorer = load_scorer(RewardConfig(source=n_words), n_words, Roles())
    assert isinstance(scorer, FunctionScorer) and scorer.score(QUERIES, RESPONSES) == [2.0, 1.0]


def test_shipped_rlvr_recipes():
    gold = load_recipe(REPO / "recipes" / "rlvr-gold.yaml")
    assert gold.ppo.reward.source == "align.eval.labeler:gold_score_fn" and not gold.ppo.reward.functions
    assert gold.rank is None and gold.reward is None  # no rankings and no reward model: the checker is the reward
    hybrid = load_recipe(REPO / "recipes" / "rlvr-hybrid.yaml")
    assert hybrid.ppo.reward.source == "@reward"
    assert [t.function for t in hybrid.ppo.reward.functions] == ["align.eval.labeler:gold_score_fn"]
