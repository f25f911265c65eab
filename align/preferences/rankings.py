"""Rankings: K responses to one prompt, ordered best to worst by a judge (the reward model's training data).

On disk (``rankings.jsonl``, one record a line)::

    {"prompt": str | [messages], "responses": [str, ...], "ranking": [[i, j], [k], ...]}

``ranking`` lists tie groups of response indices, best first; a flat list of ints (no ties) is
accepted too, and so is a mix (``[0, [1, 2], 3]``). Every index appears exactly once.

Readers also accept preference pairs, which are rankings with K = 2:
- plain pairs ``{prompt, chosen, rejected}`` (strings, or TRL's conversational message lists);
- Anthropic HH ``{chosen, rejected}``: two full ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``
  transcripts, usually sharing everything up to the last Assistant turn. Public HH files also hold
  pairs that differ in an earlier turn: those are split at the last Human turn both share, and each
  response is the rest of its transcript, several turns long (see `split_hh`).

Unusable records (a missing key, a bad ranking, HH transcripts with no Human turn in common) fail
the read by default; `read_rankings_checked(..., max_bad_records=...)` skips up to that many
(a fraction of the records, or a count) and reports them by file:line.

Training groups records by prompt (`group_by_prompt`) so that one batch element is one prompt with
all of its responses, as in InstructGPT.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.jsonl import iter_jsonl, read_records, repair_torn_tail

log = logging.getLogger("align.rankings")

RANKINGS_FILE = "rankings.jsonl"
MAX_BAD_RECORDS_HELP = (
    "Unusable records of data (a missing key, a bad ranking, HH transcripts with no Human turn in common, "
    "transcript markup left in a message) to skip before the stage fails: below 1 a fraction of the records, "
    "else a count; 0 = the first one fails. Skipped records are counted in the log and metrics.json.")
HUMAN_TURN = "\n\nHuman:"
ASSISTANT_TURN = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
# HH turn markup a split missed ("\n \nHuman:", "\n\n Assistant:"): never inside a training message
_HH_MARKUP = re.compile(r"\n[ \t\r]*\n[ \t]*(Human|Assistant):")

Ranking = list[list[int]]  # tie groups of response indices, best group first


@dataclass
class RankingRecord:
    """One prompt, its K responses and their order (tie groups, best first)."""

    prompt: list[dict]  # chat messages ending with the user turn the responses answer
    responses: list[str]
    ranking: Ranking
    where: str = ""  # "file:line", for error messages
    split_early: bool = False  # an HH pair that differed before its last Assistant turn (multi-turn responses)

    def __post_init__(self) -> None:
        if self.ranking:  # empty: a labeling task not ranked yet
            self.ranking = tie_identical_responses(self.responses, self.ranking)

    @property
    def k(self) -> int:
        return len(self.responses)

    @property
    def prompt_text(self) -> str:
        return prompt_text(self.prompt)

    def to_json(self, **extra: Any) -> dict:
        """The on-disk form; a single user turn is written as a plain string."""
        prompt: Any = self.prompt_text if is_single_user_turn(self.prompt) else self.prompt
        return {"prompt": prompt, "responses": self.responses, "ranking": self.ranking, **extra}


# --------------------------------------------------------------------------- rankings and pairs


def expand_pairs(ranking: Ranking) -> list[tuple[int, int]]:
    """All (better, worse) index pairs a ranking implies; pairs inside a tie group are skipped.

    K responses with no ties give K·(K−1)/2 pairs. Order: by the better response's group, then the
    worse response's group, then position inside the groups (deterministic for the same input).
    """
    pairs = []
    for g, better_group in enumerate(ranking):
        for worse_group in ranking[g + 1 :]:
            pairs.extend((b, w) for b in better_group for w in worse_group)
    return pairs


def tie_identical_responses(responses: list[str], ranking: Ranking) -> Ranking:
    """Put identical responses in one tie group, so one text is never both better and worse than another.

    A judge can place two copies of the same text at different ranks (x > y > x'); taken literally that
    gives the contradictory pairs x > y and y > x. The same text is equally good wherever it appears, so
    every tie group from the first copy's to the last copy's is merged into one (x = y = x': by
    transitivity whatever was ranked between the copies ties with them too); groups outside stay.
    """
    spans: dict[str, tuple[int, int]] = {}
    for g, group in enumerate(ranking):
        for i in group:
            first, _ = spans.get(responses[i], (g, g))
            spans[responses[i]] = (first, g)
    merged: Ranking = []
    end = -1  # last group index the tie group being built must reach
    for g, group in enumerate(ranking):
        reach = max(last for first, last in spans.values() if first <= g <= last)
        if g <= end:
            merged[-1].extend(group)
        else:
            merged.append(list(group))
        end = max(end, reach)
    return merged


def normalize_ranking(raw: Any, k: int, where: str) -> Ranking:
    """Flat list / tie groups / a mix → tie groups; every index 0..k-1 exactly once."""
    expected = (f"expected 'ranking' as a list of response indices best→worst (e.g. [2, 0, 1]) or of "
                f"tie groups (e.g. [[2], [0, 1]]) covering each of 0..{k - 1} exactly once")
    if not isinstance(raw, list) or not raw:
        raise AlignError(f"{where}: {expected}; got {raw!r}")
    groups: Ranking = []
    for item in raw:
        group = item if isinstance(item, list) else [item]
        if not group or not all(isinstance(i, int) and not isinstance(i, bool) for i in group):
            raise AlignError(f"{where}: {expected}; {item!r} is not an index or a non-empty list of indices")
        groups.append(list(group))
    seen = [i for g in groups for i in g]
    bad = [i for i in seen if not 0 <= i < k]
    if bad:
        raise AlignError(f"{where}: ranking index {bad[0]} is out of range for {k} responses; {expected}")
    if len(seen) != len(set(seen)) or len(seen) != k:
        dup = sorted({i for i in seen if seen.count(i) > 1})
        missing = sorted(set(range(k)) - set(seen))
        problem = f"index {dup[0]} appears twice" if dup else f"indices {missing} are missing"
        raise AlignError(f"{where}: {problem}; {expected}")
    return groups


# --------------------------------------------------------------------------- prompts as chat messages


def prompt_text(messages: list[dict]) -> str:
    """The last user message: what a gold function or a judge sees as 'the prompt'."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def is_single_user_turn(messages: list[dict]) -> bool:
    return len(messages) == 1 and messages[0]["role"] == "user"


def prompt_messages(prompt: Any, where: str = "prompt") -> list[dict]:
    """A prompt given as a string or as chat messages → chat messages ending with a user turn."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise AlignError(f"{where}: empty prompt")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt:
        messages = []
        for j, m in enumerate(prompt):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise AlignError(f"{where}: prompt[{j}] must be an object with string 'role' and 'content'")
            messages.append({"role": m["role"], "content": m["content"]})
        if messages[-1]["role"] != "user":
            raise AlignError(f"{where}: the prompt's last message must be a user turn, got {messages[-1]['role']!r}")
        return messages
    raise AlignError(f"{where}: 'prompt' must be a non-empty string or a list of chat messages, got {prompt!r:.80}")


def hh_messages(transcript: str, where: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c' → [user a, assistant b, user c]."""
    parts = _HH_TURN.split(transcript)
    if parts[0].strip():
        raise AlignError(f"{where}: HH transcript must start with '\\n\\nHuman:', found {parts[0][:40]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _hh_text(text: str, name: str, where: str) -> str:
    """A transcript normalised to start with '\\n\\nHuman:' (some files drop the leading blank line), CRLF
    line ends read as LF (the markup is '\\n\\nHuman:'; a file saved on Windows holds '\\r\\n\\r\\nHuman:')."""
    text = text.replace("\r\n", "\n")
    if not text.startswith(("\n\nHuman:", "Human:")):
        text = text.lstrip()
    if text.startswith("Human:"):
        text = "\n\n" + text
    if ASSISTANT_TURN not in text:
        raise AlignError(f"{where}: '{name}' has no '\\n\\nAssistant:' turn; expected an Anthropic HH transcript")
    return text


def hh_continuation(messages: list[dict]) -> str:
    """Turns that follow a prompt, starting with an assistant turn → one response string in HH markup:
    the first assistant text, then '\\n\\nHuman: ...' / '\\n\\nAssistant: ...' for each later turn."""
    markers = {"user": HUMAN_TURN, "assistant": ASSISTANT_TURN}
    return messages[0]["content"] + "".join(f"{markers[m['role']]} {m['content']}" for m in messages[1:])


def response_messages(response: str) -> list[dict]:
    """A response → the assistant (and later) turns it holds.

    A plain response is one assistant turn. A response that spans several turns (an HH pair split
    before its last Assistant turn, see `split_hh`) holds them in HH markup, and becomes
    [assistant, user, assistant, ...] so reward models read the real turns, not the markup.
    """
    parts = _HH_TURN.split(response)
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": "assistant", "content": parts[0].strip()},
            *({"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2))]


def markup_problem(messages: list[dict]) -> str | None:
    """Why these chat messages are unusable for training (HH turn markup inside a message), or None.

    A message holding "\n\nHuman: ..." teaches a policy to write the user's next turn itself; every
    multi-turn response must reach a trainer as real alternating turns (`response_messages`)."""
    for j, m in enumerate(messages):
        if isinstance(m.get("content"), str) and (found := _HH_MARKUP.search(m["content"])):
            return (f"its {m['role']} message #{j} holds HH transcript markup {found.group(0)!r}; expected real "
                    "chat turns (give the conversation as a message list, or the pair as HH transcripts)")
    return None


def training_messages(response: str, where: str) -> list[dict]:
    """A response → the real turns a trainer sees (`response_messages`), checked free of transcript markup."""
    messages = response_messages(response)
    if problem := markup_problem(messages):
        raise AlignError(f"{where}: {problem}")
    return messages


def split_hh(chosen: str, rejected: str, where: str) -> tuple[list[dict], str, str]:
    """Anthropic HH pair → (prompt messages, chosen response, rejected response); see `_split_hh`."""
    messages, chosen_response, rejected_response, _ = _split_hh(chosen, rejected, where)
    return messages, chosen_response, rejected_response


def _same_turns(a: list, b: list) -> bool:
    """Same roles and same texts up to whitespace: a doubled space or a trailing newline in one copy of a
    shared turn is not a different conversation (public HH files have both). Anything that is not a
    {role, content: str} message compares exactly (the caller's checks report it)."""
    def same(x: Any, y: Any) -> bool:
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in (x, y)):
            return x == y
        return x.get("role") == y.get("role") and x["content"].split() == y["content"].split()

    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def _split_hh(chosen: str, rejected: str, where: str) -> tuple[list[dict], str, str, bool]:
    """Anthropic HH pair → (prompt messages, chosen response, rejected response, split early?).

    Usually both transcripts are cut at their LAST '\\n\\nAssistant:': what comes before is identical
    (the shared conversation), what comes after is each response.

    Some public HH pairs differ in an earlier turn (4 of 1,849 in one split). TRL trains on those as
    whole transcripts; here they are split at the last turn boundary both share that ends with a Human
    turn: the prompt is the shared complete turns up to that Human turn, each response the rest of its
    transcript (an assistant turn, then possibly more Human/Assistant turns), written in HH markup as
    `hh_continuation` does. Readers of a response (`response_messages`) turn it back into real turns:
    causal reward models see them through the chat template, encoders as role-labelled lines.
    A pair that shares no Human turn is unusable.
    """
    chosen, rejected = _hh_text(chosen, "chosen", where), _hh_text(rejected, "rejected", where)
    cut = []
    for text in (chosen, rejected):
        at = text.rfind(ASSISTANT_TURN)
        cut.append((text[:at], text[at + len(ASSISTANT_TURN) :].strip()))
    (prefix, chosen_response), (other_prefix, rejected_response) = cut
    if prefix == other_prefix or _same_turns(hh_messages(prefix, where), hh_messages(other_prefix, where)):
        messages = hh_messages(prefix, where)  # chosen's texts, as they are
        if not messages or messages[-1]["role"] != "user":
            raise AlignError(f"{where}: the HH conversation must end with a Human turn before the last Assistant turn")
        return messages, chosen_response, rejected_response, False
    turns = hh_messages(chosen, where), hh_messages(rejected, where)
    shared = 0
    while shared < min(map(len, turns)) and _same_turns(turns[0][shared : shared + 1], turns[1][shared : shared + 1]):
        shared += 1
    while shared and turns[0][shared - 1]["role"] != "user":
        shared -= 1  # the prompt ends with the Human turn the responses answer
    rest = turns[0][shared:], turns[1][shared:]
    if not shared or not all(r and r[0]["role"] == "assistant" for r in rest):
        raise AlignError(f"{where}: 'chosen' and 'rejected' differ before their last Assistant turn and share no "
                         "Human turn followed by an Assistant turn in each; expected two HH transcripts of the same "
                         "conversation")
    return turns[0][:shared], hh_continuation(rest[0]), hh_continuation(rest[1]), True


# --------------------------------------------------------------------------- reading


def _response(value: Any, where: str, key: str) -> str:
    """A response given as a string or as TRL's conversational [{"role": "assistant", ...}]."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    raise AlignError(f"{where}: '{key}' must be a string or [{{'role': 'assistant', 'content': ...}}], got {value!r:.80}")


def _implicit_prompt_pair(chosen: list, rejected: list, where: str) -> tuple[list[dict], str, str, bool]:
    """TRL's conversational pairs without a 'prompt' → (prompt, chosen, rejected, split early?).

    Usually the two message lists share every turn but the last. Lists that differ earlier are split as
    HH transcripts are (`_split_hh`): at the last shared user turn, each response the rest of its list
    (an assistant turn, then possibly more turns) in HH markup, read back as real turns."""
    if chosen[:-1] and _same_turns(chosen[:-1], rejected[:-1]):  # chosen's texts, as they are
        return (prompt_messages(chosen[:-1], where), _response(chosen[-1:], where, "chosen"),
                _response(rejected[-1:], where, "rejected"), False)
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        for turn in turns:
            if not (isinstance(turn, dict) and turn.get("role") in ("user", "assistant", "system")
                    and isinstance(turn.get("content"), str)):
                raise AlignError(f"{where}: '{key}' must be a list of {{'role': 'user'|'assistant', 'content': "
                                 f"str}} messages, got {turn!r:.80}")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and _same_turns(chosen[shared : shared + 1],
                                                                    rejected[shared : shared + 1]):
        shared += 1
    while shared and chosen[shared - 1]["role"] != "user":
        shared -= 1  # the prompt ends with the user turn the responses answer
    rest = chosen[shared:], rejected[shared:]
    if (not shared or not all(r and r[0]["role"] == "assistant" for r in rest)
            or any(m["role"] == "system" for r in rest for m in r)):
        raise AlignError(f"{where}: 'chosen' and 'rejected' message lists share no user turn that each answers "
                         "with an assistant turn; expected two versions of the same conversation")
    return prompt_messages(chosen[:shared], where), hh_continuation(rest[0]), hh_continuation(rest[1]), True


def parse_record(rec: dict, where: str) -> RankingRecord:
    """One JSON record (ranking, plain pair or HH pair) → RankingRecord, rejected if a prompt or response
    still holds HH turn markup after splitting (`markup_problem`)."""
    record = _parse_record(rec, where)
    for messages in (record.prompt, *map(response_messages, record.responses)):
        if problem := markup_problem(messages):
            raise AlignError(f"{where}: {problem}")
    return record


def _parse_record(rec: dict, where: str) -> RankingRecord:
    if "responses" in rec or "ranking" in rec:
        responses = rec.get("responses")
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise AlignError(f"{where}: 'responses' must be a list of at least 2 strings")
        if "prompt" not in rec:
            raise AlignError(f"{where}: a ranking record needs 'prompt', 'responses' and 'ranking'")
        if "ranking" not in rec:
            raise AlignError(f"{where}: missing 'ranking' (response indices best→worst)")
        return RankingRecord(prompt_messages(rec["prompt"], where), list(responses),
                             normalize_ranking(rec["ranking"], len(responses), where), where)
    if "chosen" in rec and "rejected" in rec:
        chosen, rejected = rec["chosen"], rec["rejected"]
        if rec.get("prompt") is not None:
            prompt = prompt_messages(rec["prompt"], where)
            pair = (_response(chosen, where, "chosen"), _response(rejected, where, "rejected"))
        elif isinstance(chosen, str) and isinstance(rejected, str):
            prompt, *pair, early = _split_hh(chosen, rejected, where)
            return RankingRecord(prompt, list(pair), [[0], [1]], where, split_early=early)
        elif isinstance(chosen, list) and isinstance(rejected, list):
            prompt, *pair, early = _implicit_prompt_pair(chosen, rejected, where)
            return RankingRecord(prompt, list(pair), [[0], [1]], where, split_early=early)
        else:
            raise AlignError(f"{where}: 'chosen' and 'rejected' must both be strings or both be message lists")
        return RankingRecord(prompt, list(pair), [[0], [1]], where)
    raise AlignError(
        f"{where}: unrecognised record with keys {sorted(rec)}; expected {{prompt, responses, ranking}} "
        "(rankings), {prompt, chosen, rejected} (pairs) or {chosen, rejected} (Anthropic HH transcripts)"
    )


def rankings_path(path: str | Path) -> Path:
    """A rankings file, or a rank stage folder holding rankings.jsonl."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / RANKINGS_FILE).is_file():
            return path / RANKINGS_FILE
        raise AlignError(f"{path}: directory holds no {RANKINGS_FILE}")
    return path


def check_rankings_source(path: str | Path) -> Path:
    """The rankings file a path names, rejected at once if it is local and missing (`align validate` too)."""
    from align.data import is_local_path

    source = rankings_path(path)
    if not source.exists() and is_local_path(str(path)):
        raise AlignError(f"rankings file not found: {path}")
    return source


@dataclass
class ReadReport:
    """What reading a rankings file found besides the usable records."""

    records: int = 0  # usable records kept
    split_early: int = 0  # HH pairs split before their last Assistant turn (multi-turn responses)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (file:line, why) of each skipped record


def bad_record_limit(max_bad_records: float, total: int) -> int:
    """How many unusable records a file of `total` records may have: a value below 1 is a fraction of
    them (rounded down), 1 or more an absolute count."""
    return int(max_bad_records) if max_bad_records >= 1 else math.floor(max_bad_records * total)


def read_rankings(path: str | Path, max_records: int | None = None) -> list[RankingRecord]:
    """Every record of a rankings / pairs / HH file; the first unusable record fails the read."""
    return read_rankings_checked(path, max_records)[0]


def read_rankings_checked(path: str | Path, max_records: int | None = None,
                          max_bad_records: float = 0.0) -> tuple[list[RankingRecord], ReadReport]:
    """Every record of a rankings / pairs / HH file (JSONL, JSON list, csv/parquet or a datasets hub id),
    and a report of what was split or skipped.

    Unusable records are skipped while there are at most `bad_record_limit(max_bad_records, records
    read)` of them; past that the read fails, naming the first few by file:line. With 0 the first one
    fails it with its own message. Lines that are not valid JSON always fail the read (a damaged file).
    """
    from align.data import _records_from_datasets

    source = check_rankings_source(path)
    if source.is_file() and source.suffix in (".json", ".jsonl"):
        rows = read_records(source)
    elif source.exists():
        rows = _records_from_datasets(str(source), "train", local=True)
    else:
        rows = _records_from_datasets(str(path), "train", local=False)
    records: list[RankingRecord] = []
    report = ReadReport()
    seen = 0
    for where, rec in rows:
        if rec.get("skipped") is True:  # `align label` records skipped tasks without a ranking
            continue
        seen += 1
        try:
            record = parse_record(rec, where)
        except AlignError as exc:
            if max_bad_records <= 0:
                raise
            report.bad.append((where, str(exc)))
            continue
        records.append(record)
        report.split_early += record.split_early
        if max_records and len(records) >= max_records:
            break
    report.records = len(records)
    if len(report.bad) > bad_record_limit(max_bad_records, seen):
        first = "; ".join(why for _, why in report.bad[:3])
        raise AlignError(f"{path}: {len(report.bad)} of {seen} records are unusable, more than max_bad_records = "
                         f"{max_bad_records} allows (a fraction below 1, else a count); first: {first}")
    if not records:
        raise AlignError(f"{path}: no rankings found")
    return records, report


def read_stage_rankings(path: str | Path, stage: str, max_records: int | None = None,
                        max_bad_records: float = 0.0) -> tuple[list[RankingRecord], dict[str, Any]]:
    """What every stage that trains or evaluates on rankings reads them with: `read_rankings_checked`
    (skip up to max_bad_records unusable records, else fail naming file:line), the log lines saying
    what was skipped or split, and the counts for metrics.json, so the same file gets the same verdict
    and the same report in every stage."""
    records, report = read_rankings_checked(path, max_records, max_bad_records)
    if report.split_early:
        log.info("%s: %d HH pairs in %s differ before their last Assistant turn; split at the last shared Human "
                 "turn (their responses span several turns)", stage, report.split_early, path)
    if report.bad:
        log.warning("%s: skipped %d unusable records of %s (max_bad_records = %s); first: %s", stage,
                    len(report.bad), path, max_bad_records, report.bad[0][1])
    return records, {"records": report.records, "hh_split_early": report.split_early, "bad_records": len(report.bad),
                     "bad_record_examples": [why for _, why in report.bad[:5]]}


# --------------------------------------------------------------------------- grouping for training


@dataclass
class PromptGroup:
    """All responses a prompt got (duplicates merged) and every distinct (better, worse) pair among them."""

    prompt: list[dict]
    responses: list[str]
    pairs: list[tuple[int, int]]
    k: int  # responses per ranking record (for accuracy by K)
    duplicate_pairs: int = 0  # pairs dropped because an earlier record of this prompt gave the same pair


def prompt_key(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def group_by_prompt(records: list[RankingRecord]) -> list[PromptGroup]:
    """Merge records that share a prompt (e.g. several HH pairs) into one training element.

    Identical response strings are merged, so each distinct response is scored once; a pair whose
    two sides are the same text is dropped (it carries no preference), and so is a pair the prompt
    already has (duplicate records, common in public pair files): kept, it would count twice in the
    pairwise mean and put the worse response twice into Plackett–Luce's logsumexp (two identical HH
    records, r_chosen − r_rejected = 0.3: loss 0.909 instead of 0.554). Counted in `duplicate_pairs`.
    Order: first appearance.
    """
    groups: dict[str, PromptGroup] = {}
    seen: dict[str, set[tuple[int, int]]] = {}  # each group's pairs, for constant-time duplicate checks
    for rec in records:
        key = prompt_key(rec.prompt)
        group = groups.setdefault(key, PromptGroup(rec.prompt, [], [], rec.k))
        pairs = seen.setdefault(key, set())
        group.k = max(group.k, rec.k)
        index = {}
        for i, response in enumerate(rec.responses):
            if response not in group.responses:
                group.responses.append(response)
            index[i] = group.responses.index(response)
        for b, w in expand_pairs(rec.ranking):
            pair = (index[b], index[w])
            if pair in pairs:
                group.duplicate_pairs += 1
            elif pair[0] != pair[1]:
                group.pairs.append(pair)
                pairs.add(pair)
    return list(groups.values())


def drop_duplicate_rows(rows: list[dict]) -> tuple[list[dict], int]:
    """Trainer rows (DPO pairs, KTO examples) without exact repeats, and how many were dropped: a
    duplicate record would weigh its pair twice (`group_by_prompt` does the same for reward models)."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = json.dumps(row, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def split_by_prompt(groups: list[PromptGroup], eval_fraction: float, seed: int) -> tuple[list[PromptGroup], list[PromptGroup]]:
    """Deterministic train / held-out split of prompts (never of pairs: a prompt is all in one side)."""
    import random

    if eval_fraction <= 0 or len(groups) < 2:
        return groups, []
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(groups) - 1, max(1, round(len(groups) * eval_fraction)))
    held = set(order[:n_eval])
    return [g for i, g in enumerate(groups) if i not in held], [g for i, g in enumerate(groups) if i in held]


# --------------------------------------------------------------------------- preference pairs / KTO labels


PAIR_MODES = ("all", "best_vs_worst", "best_vs_each")


def select_pairs(ranking: Ranking, mode: str = "all") -> list[tuple[int, int]]:
    """(better, worse) index pairs of one ranking for pairwise preference optimisation (DPO and kin).

    all:           every pair across tie groups (K·(K−1)/2 without ties) — `expand_pairs`;
    best_vs_worst: each response of the best group vs each of the worst group;
    best_vs_each:  each response of the best group vs each response of every lower group.
    Tied responses never form a pair; a ranking that is one tie group gives none.
    """
    if mode == "all":
        return expand_pairs(ranking)
    if len(ranking) < 2:
        return []
    best = ranking[0]
    if mode == "best_vs_worst":
        return [(b, w) for b in best for w in ranking[-1]]
    if mode == "best_vs_each":
        return [(b, w) for b in best for group in ranking[1:] for w in group]
    raise AlignError(f"pair mode {mode!r}: expected one of {', '.join(PAIR_MODES)}")


def preference_pairs(records: list[RankingRecord], mode: str = "all") -> tuple[list[dict], list[str]]:
    """Rankings → TRL preference rows ``{prompt: [messages], chosen: [messages], rejected: [messages]}``.

    A response spanning several turns (an HH pair split early) becomes real alternating turns
    [assistant, user, assistant, ...], TRL's conversational format (DPOTrainer renders prompt + chosen
    with the chat template), never one assistant message holding "\n\nHuman:" markup. Pairs whose two
    responses are the same text are dropped (no preference to learn). Returns the rows and where
    ("file:line") each record that gave no pair at all is (all tied, or only identical texts).
    """
    rows: list[dict] = []
    empty: list[str] = []
    for rec in records:
        made = 0
        for b, w in select_pairs(rec.ranking, mode):
            if rec.responses[b] == rec.responses[w]:
                continue
            rows.append({"prompt": rec.prompt, "chosen": training_messages(rec.responses[b], rec.where),
                         "rejected": training_messages(rec.responses[w], rec.where)})
            made += 1
        if not made:
            empty.append(rec.where)
    return rows, empty


def kto_labels(ranking: Ranking, top: int = 1, bottom: int = 1) -> tuple[list[int], list[int]]:
    """(desirable, undesirable) response indices of one ranking for KTO's unpaired labels.

    The `top` best tie groups are desirable, the `bottom` worst groups undesirable; a group is never
    both (the desirable side wins when they would overlap), middle groups are unused, and a ranking
    that is one tie group gives nothing.
    """
    if len(ranking) < 2:
        return [], []
    n_top = min(top, len(ranking) - 1)
    n_bottom = min(bottom, len(ranking) - n_top)
    desirable = [i for group in ranking[:n_top] for i in group]
    undesirable = [i for group in ranking[len(ranking) - n_bottom:] for i in group]
    return desirable, undesirable


def kto_examples(records: list[RankingRecord], top: int = 1, bottom: int = 1) -> tuple[list[dict], list[str]]:
    """Rankings → TRL KTO rows ``{prompt, completion: [messages], label: bool}`` (multi-turn responses as
    real turns, as `preference_pairs`); also where each record that gave none is (one tie group). A
    response text labelled both ways in one record is dropped."""
    rows: list[dict] = []
    empty: list[str] = []
    for rec in records:
        good, bad = kto_labels(rec.ranking, top, bottom)
        good_texts = {rec.responses[i] for i in good}
        bad_texts = {rec.responses[i] for i in bad}
        both = good_texts & bad_texts
        made = 0
        for indices, label in ((good, True), (bad, False)):
            for i in indices:
                if rec.responses[i] in both:
                    continue
                rows.append({"prompt": rec.prompt, "completion": training_messages(rec.responses[i], rec.where),
                             "label": label})
                made += 1
        if not made:
            empty.append(rec.where)
    return rows, empty


def split_records_by_prompt(records: list[RankingRecord], eval_fraction: float,
                            seed: int) -> tuple[list[RankingRecord], list[RankingRecord]]:
    """Train / held-out records with every record of a prompt on one side (as `split_by_prompt`)."""
    import random

    keys = list(dict.fromkeys(prompt_key(r.prompt) for r in records))
    if eval_fraction <= 0 or len(keys) < 2:
        return records, []
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(keys) - 1, max(1, round(len(keys) * eval_fraction)))
    held = {keys[i] for i in order[:n_eval]}
    return ([r for r in records if prompt_key(r.prompt) not in held],
            [r for r in records if prompt_key(r.prompt) in held])


# --------------------------------------------------------------------------- writing (resumable)


class JsonlAppender:
    """Append records one by one, each flushed and fsynced, so a killed run loses at most the line in flight.

    Opening an existing file first cuts off a partial last line (a write interrupted by the kill) and
    collects `key_field` of every complete record, so a resumed run can skip what is already written.
    """

    def __init__(self, path: str | Path, key_field: str = "prompt"):
        self.path = Path(path)
        self.done: set[str] = set()
        if self.path.exists():
            repair_torn_tail(self.path)
            self.done = {self.key(rec.get(key_field)) for _, rec in iter_jsonl(self.path)}
        self.key_field = key_field
        self._fh = self.path.open("a", encoding="utf-8")

    @staticmethod
    def key(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.add(self.key(record.get(self.key_field)))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
