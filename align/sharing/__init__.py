"""A trained model for others: its model card, `align export` (a folder), `align push` (a Hugging Face Hub
repo) and `align serve` (an OpenAI-compatible HTTP API)."""
