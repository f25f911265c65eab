"""align: post-training alignment of language models (Self-Instruct, SFT, reward models, PPO, eval)."""

__version__ = "0.1.0"
