"""Evaluation: the gold-reward sandbox (verifiable constraints), a simulated labeler, and win rates."""
