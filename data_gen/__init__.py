"""Self-Instruct data generation, the model-independent core (installed as ``align.data_gen``).

- ``seeds``: seed tasks in the Self-Instruct JSONL format (ours ship as ``seed_tasks.jsonl``).
- ``prompts``: prompt builders and tolerant parsers for the teacher's output.
- ``rouge_filter``: exact and fast ROUGE-L near-duplicate pool (``SimilarityPool``).
- ``filters``: heuristic filters with named drop reasons and a ``FilterReport``.
- ``diversity``: verb-noun diversity statistics.
- ``records``: crash-safe append-only JSONL (resumable runs).
- ``export``: Alpaca JSON, Self-Instruct JSONL and chat JSONL writers.
"""
