"""Comparison data and what learns from it: rankings (K responses best → worst), the judges that make them
(a gold function, an LLM, people on the labeling page in `label`), and the reward model trained on them.

The `rank`, `reward` and `dpo` stages are built from these; `ppo` scores rollouts with the reward model.
"""
