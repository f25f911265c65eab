"""The gold prompt set: determinism, the shipped file, split disjointness, satisfiability, scoring."""

import json
from collections import Counter

import pytest

from align.errors import AlignError
from align.eval import constraints as C
from align.eval import gold


@pytest.fixture(scope="module")
def generated():
    return gold.generate_gold_prompts()


def test_generation_is_deterministic_and_seed_dependent(generated):
    again = gold.generate_gold_prompts()
    assert gold.dumps_jsonl(again) == gold.dumps_jsonl(generated)
    other = gold.generate_gold_prompts(seed=gold.SEED + 1)
    assert gold.dumps_jsonl(other) != gold.dumps_jsonl(generated)


def test_shipped_file_matches_regeneration(generated):
    shipped = gold.GOLD_PROMPTS_PATH.read_text(encoding="utf-8")
    assert shipped == gold.dumps_jsonl(generated), "run: python -m align.eval.gold --write"
    assert gold.main(["--check"]) == 0


def test_focus_set_matches_regeneration_and_keeps_the_split():
    """The focus set: only its five families, 1-2 per prompt, the full set's held-out base tasks."""
    focus = gold.generate_gold_set("focus")
    assert gold.GOLD_SETS["focus"].path.read_text(encoding="utf-8") == gold.dumps_jsonl(focus)
    assert {c.type_id for p in focus for c in p.constraints} == set(gold.FOCUS_SAMPLERS)
    assert all(1 <= len(p.constraints) <= 2 for p in focus)
    full_split = {p.task_id: p.split for p in gold.load_gold_prompts("all")}
    assert all(full_split[p.task_id] == p.split for p in focus)
    assert sum(p.split == "heldout" for p in focus) >= 64
    # the gold reward finds focus prompts by their text, as it does the full set's
    heldout = [p for p in focus if p.split == "heldout"][0]
    assert gold.lookup_gold_prompt(heldout.prompt).constraints == heldout.constraints


def test_check_entry_point_flags_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "gold.jsonl"
    stale.write_text(gold.GOLD_PROMPTS_PATH.read_text(encoding="utf-8")[:-200], encoding="utf-8")
    assert gold.main(["--check", "--path", str(stale)]) == 1
    assert "stale" in capsys.readouterr().err
    assert gold.main(["--write", "--path", str(stale)]) == 0
    assert gold.main(["--check", "--path", str(stale)]) == 0


def test_set_size_split_ratio_and_ids(generated):
    counts = Counter(p.split for p in generated)
    assert len(generated) >= 400
    assert counts["heldout"] / len(generated) == pytest.approx(0.25)
    assert len({p.id for p in generated}) == len(generated)
    assert len({p.prompt for p in generated}) == len(generated), "prompt text must identify a record"
    assert len(gold.BASE_TASKS) >= 40


def test_splits_share_no_base_task_and_cover_every_kind(generated):
    train = {p.task_id for p in generated if p.split == "train"}
    heldout = {p.task_id for p in generated if p.split == "heldout"}
    assert train and heldout and not train & heldout
    task_text = {t.id: t.text for t in gold.BASE_TASKS}
    train_texts = {task_text[t] for t in train}
    assert all(task_text[t] not in train_texts for t in heldout)
    kind = {t.id: t.kind for t in gold.BASE_TASKS}
    assert {kind[t] for t in train} == {kind[t] for t in heldout} == {t.kind for t in gold.BASE_TASKS}


def test_every_constraint_type_appears_in_both_splits(generated):
    for split in gold.SPLITS:
        used = {c.type_id for p in generated if p.split == split for c in p.constraints}
        assert used == set(C.CONSTRAINT_TYPES), split


def test_prompts_have_one_to_three_compatible_constraints(generated):
    sizes = Counter(len(p.constraints) for p in generated)
    assert set(sizes) == {1, 2, 3}
    for p in generated:
        assert C.find_conflicts(p.constraints) == [], p.id
        types = [c.type_id for c in p.constraints]
        assert not {"case:lowercase", "case:uppercase"} <= set(types)
        assert p.prompt.endswith(" ".join(c.describe() for c in p.constraints))
        for c in p.constraints:
            if isinstance(c, C.MaxWords):
                assert all(o.n + 20 <= c.n for o in p.constraints if isinstance(o, C.MinWords))


# --- a constructive proof that no generated prompt is contradictory: build a response satisfying it ---

_NAMES = ("[name]", "[place]", "[date]", "[time]", "[email]", "[phone]")


def _witness(prompt: gold.GoldPrompt) -> str:
    """A response meeting every constraint of `prompt`, built mechanically (dull but valid)."""
    by = {c.type_id: c for c in prompt.constraints}
    get = by.get

    def render(pad: int, extra: int) -> str:
        forced = next((c.forced_first_word() for c in prompt.constraints if c.forced_first_word()), None)
        inline = []
        if kw := get("keywords:include"):
            inline.append("with " + " and ".join([kw.keyword] * kw.n))
        if ka := get("keywords:include_all"):
            inline.append("with " + " and ".join(ka.keywords))
        if ph := get("format:placeholders"):
            inline.append("using " + " and ".join(_NAMES[: ph.n]))
        if hl := get("format:highlights"):
            inline.append("with " + " and ".join(["*key idea*"] * hl.n))
        if (cw := get("case:capital_word_frequency")) and cw.relation == "at_least":
            inline.append("with " + " ".join(["NOTE"] * cw.n))
        if lf := get("keywords:letter_frequency"):
            inline.append(f"with {lf.letter * lf.n}")
        body = " ".join(["this answer covers the topic", *inline, *["and one more detail"] * pad])
        sentence = f"{forced} {body}." if forced else body[0].upper() + body[1:] + "."
        main = [rp.request] if (rp := get("startend:repeat_prompt")) else []
        main += [sentence, *["Here is another point."] * extra]
        if qm := get("punctuation:question_marks"):
            present = sum(t.count("?") for c in prompt.constraints for t, _ in c.required_texts())
            main += ["Why does it matter?"] * (qm.n - present)
        lines = [" ".join(main)]
        if get("format:title"):
            lines.append("<<A Good Title>>")
        if hd := get("format:headings"):
            lines += ["# Heading\nHere is a point."] * hd.n
        if bl := get("format:bullets"):
            lines += ["* A point here"] * bl.n
        if nl := get("format:numbered_list"):
            lines += [f"{i}. A point here" for i in range(1, nl.n + 1)]
        unit = "\n".join(lines)
        if get("format:json"):
            text = json.dumps({"answer": unit}, ensure_ascii=False)
        elif get("format:two_responses"):
            text = unit + "\n******\nA second different answer."
        elif par := (get("length:paragraphs") or get("length:nth_paragraph_first_word")):
            paras = [unit] + ["Here is another point."] * (par.n - 1)
            if isinstance(par, C.NthParagraphFirstWord) and par.nth > 1:
                paras[par.nth - 1] = f"{par.first_word} there is more to say."
            text = "\n\n".join(paras)
        elif dv := get("format:divider_paragraphs"):
            text = "\n***\n".join([unit] + ["Here is another point."] * (dv.n - 1))
        elif sc := get("format:sections"):
            parts = [f"{sc.marker.title()} {i}\nHere is another part." for i in range(1, sc.n + 1)]
            text = "\n".join([unit, *parts])
        else:
            text = unit
        if ps := get("format:postscript"):
            text += f"\n\n{ps.marker} A final note."
        if get("startend:end_question"):
            text += " Does that help?"
        if get("case:lowercase"):
            text = text.lower()
        if get("case:uppercase"):
            text = text.upper()
        if ep := get("startend:end_phrase"):
            text += " " + ep.phrase
        if get("startend:quotation"):
            text = f'"{text}"'
        return text

    pad = extra = 0
    for _ in range(200):
        text = render(pad, extra)
        if (mw := get("length:min_words")) and not mw.check(text):
            pad += 1
        elif (ms := get("length:min_sentences")) and not ms.check(text):
            extra += 1
        else:
            break
    return text


def test_every_generated_prompt_is_satisfiable(generated):
    failures = []
    for p in generated:
        text = _witness(p)
        if gold.gold_score(p, text) != 1.0:
            failed = [c.type_id for c in p.constraints if not c.check(text)]
            failures.append((p.id, failed, text))
    assert not failures, failures[:3]


# --- loading and scoring ---


def test_load_gold_prompts_by_split():
    train, heldout = gold.load_gold_prompts("train"), gold.load_gold_prompts("heldout")
    assert {p.split for p in train} == {"train"} and {p.split for p in heldout} == {"heldout"}
    assert len(train) + len(heldout) == len(gold.load_gold_prompts("all"))
    with pytest.raises(AlignError, match="unknown gold split"):
        gold.load_gold_prompts("test")


def test_read_gold_prompts_names_file_and_line_on_bad_input(tmp_path):
    good = gold.load_gold_prompts("all")[0].to_record()
    path = tmp_path / "bad.jsonl"
    bad = dict(good, constraints=[{"type": "length:max_words", "params": {"n": "x"}}])
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(AlignError, match=r"bad\.jsonl:2, constraints\[0\].*must be an integer"):
        gold.read_gold_prompts(path)
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(AlignError, match=r"bad\.jsonl:1: not valid JSON"):
        gold.read_gold_prompts(path)
    with pytest.raises(AlignError, match="expected keys"):
        gold.GoldPrompt.from_record({"id": "x"})


def _record(*constraints: C.Constraint) -> dict:
    return gold.GoldPrompt("p", "t", "Say hi.", tuple(constraints), "train").to_record()


def test_gold_score_is_the_fraction_satisfied_and_accepts_dict_records():
    record = _record(C.Lowercase(), C.NoCommas(), C.EndWithQuestion(), C.MaxWords(n=10))
    assert gold.gold_score(record, "hi there, friend?") == pytest.approx(3 / 4)
    assert gold.gold_score(record, "hi there friend?") == 1.0
    assert gold.gold_score(record, "Hi there, friend. " * 5) == 0.0
    assert gold.strict_accuracy(record, "hi there friend?") == 1.0
    assert gold.strict_accuracy(record, "hi there, friend?") == 0.0
    assert gold.constraint_results(record, "Hi there friend?") == [False, True, True, True]


def test_score_batch_aggregates_prompt_and_instruction_level():
    a = _record(C.Lowercase(), C.NoCommas())
    b = _record(C.Lowercase())
    out = gold.score_batch([a, b, b], ["hi, there", "hi", "Hi"])
    assert out["n_prompts"] == 3
    assert out["gold_score"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert out["strict_accuracy"] == pytest.approx(1 / 3)
    assert out["instruction_accuracy"] == pytest.approx(2 / 4)
    assert out["pass_rate"] == {"case:lowercase": pytest.approx(2 / 3), "punctuation:no_commas": 0.0}
    with pytest.raises(AlignError, match="2 prompts but 1 responses"):
        gold.score_batch([a, b], ["x"])


def test_prompts_can_be_given_by_their_shipped_text():
    record = gold.load_gold_prompts("train")[3]
    assert gold.as_gold_prompt(record.prompt) == record
    response = "a plain answer, with a comma."
    assert gold.score_batch([record.prompt], [response])["gold_score"] == gold.gold_score(record, response)
    with pytest.raises(AlignError, match="not in the gold prompt set"):
        gold.gold_score("An unknown prompt.", "x")
