"""Human rankings without a labeling platform: `align label` serves a local page where people order
K responses per prompt best → worst (InstructGPT's comparison data), and `align label stats`
reports how often labelers agree.

Modules: `tasks` (reading ``{prompt, responses}`` tasks), `store` (the labels file: append, replace,
fsync, lock), `server` (HTTP routes and the static page), `stats` (counts, flags, agreement),
`command` (the CLI entry).
"""
