"""Every constraint checker on hand-written positive and negative responses, plus (de)serialisation and
the compatibility rules that keep contradictory instructions out of the gold set."""

import pytest

from align.errors import AlignError
from align.eval import constraints as C

# type id -> (constraint, responses that satisfy it, responses that do not)
CASES: dict[str, tuple[C.Constraint, list[str], list[str]]] = {
    "length:max_words": (
        C.MaxWords(n=5),
        ["One two three four.", "  Don't over-think it.  ", "Très bien, merci."],
        ["One two three four five.", "a b c d e f g", ""],
    ),
    "length:min_words": (
        C.MinWords(n=4),
        ["One two three four.", "Ça va très bien aujourd'hui."],
        ["One two three.", "well-known state-of-the-art", "   "],
    ),
    "length:max_sentences": (
        C.MaxSentences(n=2),
        ["First one. Second one!", "Dr. Smith arrived, e.g. at noon. Then he left.", "No final punctuation here"],
        ["One. Two. Three.", "Is it? Yes. No!", "First。Second。Third。"],
    ),
    "length:min_sentences": (
        C.MinSentences(n=3),
        ["One. Two. Three.", "* first item\n* second item\n* third item", "Why? Because. Done!"],
        ["One. Two.", "Mr. Brown met Dr. Green.", ""],
    ),
    "length:paragraphs": (
        C.Paragraphs(n=2),
        ["First para.\n\nSecond para.", "First\nstill first.\n\n\n  \nSecond."],
        ["Only one paragraph.", "One.\n\nTwo.\n\nThree.", "Line one.\nLine two."],
    ),
    "length:nth_paragraph_first_word": (
        C.NthParagraphFirstWord(n=3, nth=2, first_word="However"),
        ["Intro.\n\nHowever, this.\n\nEnd.", "Intro.\n\n**however** it went.\n\nEnd."],
        ["Intro.\n\nBut however.\n\nEnd.", "Intro.\n\nHowever, this.", "Intro.\n\nHoweverish.\n\nEnd."],
    ),
    "format:divider_paragraphs": (
        C.DividerParagraphs(n=3),
        ["A.\n***\nB.\n***\nC.", "A.\n  ***  \nB text.\n***\nC text."],
        ["A.\n***\nB.", "A.\n***\n\n***\nC.", "A. *** B. *** C."],
    ),
    "format:bullets": (
        C.Bullets(n=2),
        ["Intro:\n* one\n* two", "- one\n  - nested two\nDone.", "* a\n***\n* b"],
        ["* one\n* two\n- three", "* one", "**bold** start\n*emphasis* here\n* * *"],
    ),
    "format:numbered_list": (
        C.NumberedList(n=3),
        ["1. a\n2. b\n3. c", "Steps:\n1) mix\n2) bake\n10) eat"],
        ["1. a\n2. b", "1. a 2. b 3. c", "1.a\n2.b\n3.c"],
    ),
    "format:json": (
        C.JsonFormat(),
        ['{"a": 1}', '```json\n{"a": [1, 2]}\n```', "  [1, 2]  ", '```\n{"k": "v"}\n```'],
        ['{"a": 1', "42", '"just a string"', 'Here you go: {"a": 1}', '```json\n{"a": 1}\n``` trailing'],
    ),
    "format:title": (
        C.Title(),
        ["<<My Title>>\nBody.", "Body first. <<Ünïcode títle>>"],
        ["<<>>\nBody.", "<< >>", "<My Title>", "<<broken\ntitle>>"],
    ),
    "format:highlights": (
        C.Highlights(n=2),
        ["This is *one* and *two*.", "**bold one** and *italic two*"],
        ["Only *one* here.", "* bullet\n* another bullet", "Spaces * do not * count, ** nor ** these."],
    ),
    "format:sections": (
        C.Sections(marker="SECTION", n=2),
        ["SECTION 1\nFirst part.\nSECTION 2\nSecond part.", "Intro.\n## Section 1: Alpha\ntext\n**SECTION 2** beta"],
        ["SECTION 1\nFirst.\nSECTION 3\nThird.", "SECTION 1\nFirst.", "SECTION 1\nFirst.\nSECTION 2\n",
         "SECTION 1 a SECTION 2 b"],
    ),
    "format:placeholders": (
        C.Placeholders(n=2),
        ["Send to [name] at [address].", "Call [phone number] or see [1]."],
        ["Send to [name].", "Empty [] and [ ] do not count.", "No brackets."],
    ),
    "format:postscript": (
        C.Postscript(marker="P.S."),
        ["Main text.\n\nP.S. See you soon.", "Body.\np.s. lowercase is fine.", "Body.\n**P. S.** spaced."],
        ["P.S. nothing before it.", "Body. P.S. not at a line start.", "Body.\nP.S.", "Body.\nP.P.S. other."],
    ),
    "format:headings": (
        C.Headings(n=2),
        ["# Title\ntext\n## Part\ntext", "### A\n#### B"],
        ["# Only one\ntext", "#hashtag\n#another", "Text with # inside\nand ## here"],
    ),
    "format:two_responses": (
        C.TwoResponses(),
        ["First answer.\n******\nSecond answer.", "A ****** B"],
        ["Same.\n******\nSame.", "One.\n******\nTwo.\n******\nThree.", "Only one.", "******\nB"],
    ),
    "case:lowercase": (
        C.Lowercase(),
        ["all lowercase here.", "ça marche très bien, 123."],
        ["Not lowercase.", "123 !!!", "straße ÜBER"],
    ),
    "case:uppercase": (
        C.Uppercase(),
        ["ALL CAPS HERE.", "ÇA MARCHE, 123!"],
        ["ALL CAPS but one", "123 ...", "STRAßE"],
    ),
    "case:capital_word_frequency": (
        C.CapitalWordFrequency(relation="at_least", n=2),
        ["This is VERY IMPORTANT.", "NASA and ESA work together."],
        ["I am A person.", "Only ONE here.", "Nothing."],
    ),
    "keywords:include": (
        C.IncludeKeyword(keyword="sun", n=2),
        ["The Sun rose. The sun set.", "SUN, sun!"],
        ["The sun rose. Sunny day.", "sunshine and sunset", "The sun."],
    ),
    "keywords:include_all": (
        C.IncludeAllKeywords(keywords=("storm", "solar panel")),
        ["A storm hit the solar\npanel.", "STORM. Solar Panel."],
        ["A storm hit the panel.", "stormy solar panels", "Nothing."],
    ),
    "keywords:exclude": (
        C.ExcludeWord(word="very"),
        ["This is quite good.", "Every reveries is fine."],
        ["This is very good.", "VERY good.", "It's Very."],
    ),
    "keywords:letter_frequency": (
        C.LetterFrequency(letter="z", n=3),
        ["Zebras zigzag lazily.", "ZZZ"],
        ["Zebras zag.", "No such letter.", "ž ž ž"],
    ),
    "startend:start_word": (
        C.StartWord(word="Certainly"),
        ["Certainly, here it is.", '**"certainly!"** yes', "  Certainly"],
        ["Sure, certainly.", "Certainlyy not.", "1 Certainly"],
    ),
    "startend:end_phrase": (
        C.EndPhrase(phrase="Any other questions?"),
        ["Here you go. Any other questions?", "Any other questions?\n\n  "],
        ["Any other questions? Thanks.", "any other questions?", "Any other questions"],
    ),
    "startend:end_question": (
        C.EndWithQuestion(),
        ["Is that clear?", 'He asked "why?"', "Ready？ **Shall we?**"],
        ["Done.", "Why? Because.", "?"],
    ),
    "startend:quotation": (
        C.Quotation(),
        ['"Wrapped."', "“Curly quotes.”", '  "x"  '],
        ['"Not closed.', 'Not "wrapped".', '""', '"'],
    ),
    "startend:repeat_prompt": (
        C.RepeatPrompt(request="Explain gravity to a child."),
        ["Explain gravity to a child. Gravity pulls things down.", "EXPLAIN gravity\nto a child.\n\nIt pulls."],
        ["Sure! Explain gravity to a child. It pulls.", "Explain gravity to a child.", "Explain gravity."],
    ),
    "punctuation:no_commas": (
        C.NoCommas(),
        ["No commas at all.", "Semicolons; colons: fine."],
        ["One, two.", "中文，逗号", "列举、顿号"],
    ),
    "punctuation:no_exclamation": (
        C.NoExclamation(),
        ["Calm text.", "Question? Fine."],
        ["Wow!", "¡Hola amigo.", "全角！"],
    ),
    "punctuation:question_marks": (
        C.QuestionMarks(n=2),
        ["Why? How?", "全角？ and ascii?"],
        ["Why?", "Why? How? What?", "None."],
    ),
    "content:no_digits": (
        C.NoDigits(),
        ["Twenty three apples.", "Seven-year-old."],
        ["There are 3 apples.", "Area: 5²", "Arabic-Indic ٣"],
    ),
}


def test_every_registered_type_has_cases_and_there_are_enough_types():
    assert set(CASES) == set(C.CONSTRAINT_TYPES)
    assert len(C.CONSTRAINT_TYPES) >= 28


@pytest.mark.parametrize("type_id", sorted(CASES))
def test_checker_positive_examples(type_id):
    constraint, positives, _ = CASES[type_id]
    assert constraint.type_id == type_id
    assert len(positives) >= 2
    for response in positives:
        assert constraint.check(response), f"{type_id} should accept {response!r}"


@pytest.mark.parametrize("type_id", sorted(CASES))
def test_checker_negative_examples(type_id):
    constraint, _, negatives = CASES[type_id]
    assert len(negatives) >= 2
    for response in negatives:
        assert not constraint.check(response), f"{type_id} should reject {response!r}"


@pytest.mark.parametrize("type_id", sorted(CASES))
def test_describe_is_a_sentence_and_roundtrips(type_id):
    constraint = CASES[type_id][0]
    text = constraint.describe()
    assert text[0].isupper() and len(text.split()) >= 4
    record = constraint.to_dict()
    assert record["type"] == type_id
    assert C.constraint_from_dict(record) == constraint


def test_check_normalises_unicode_and_line_endings():
    # "é" typed as e + combining accent is composed first: one word, and an "é" for letter counts.
    assert C.MaxWords(n=2).check("cafe\u0301s")
    assert C.LetterFrequency(letter="é", n=2).check("e\u0301te\u0301")
    assert C.Paragraphs(n=2).check("One.\r\n\r\nTwo.")
    with pytest.raises(AlignError, match="response must be a string"):
        C.NoCommas().check(None)  # type: ignore[arg-type]


def test_sentence_splitter_handles_abbreviations_lists_and_cjk():
    assert C.split_sentences("Dr. Who came, e.g. today. He left.") == ["Dr. Who came, e.g. today.", "He left."]
    assert C.count_sentences("1. First item\n2. Second item.") == 2
    assert C.count_sentences("你好。再见！") == 2


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"type": "length:nope", "params": {}}, "unknown constraint type"),
        ({"type": "length:max_words"}, "keys 'type' and 'params'"),
        ({"type": "length:max_words", "params": {"n": 5, "extra": 1}}, r"expects params \['n'\]"),
        ({"type": "length:max_words", "params": {"n": "5"}}, "must be an integer"),
        ({"type": "length:max_words", "params": {"n": True}}, "must be an integer"),
        ({"type": "length:max_words", "params": {"n": 0}}, ">= 2"),
        ({"type": "keywords:include_all", "params": {"keywords": ["a"]}}, "at least 2 keywords"),
        ({"type": "keywords:include_all", "params": {"keywords": "ab"}}, "list of strings"),
        ({"type": "length:nth_paragraph_first_word", "params": {"n": 2, "nth": 3, "first_word": "A"}}, "'nth'"),
    ],
)
def test_constraint_from_dict_rejects_bad_records_clearly(record, message):
    with pytest.raises(AlignError, match=message) as info:
        C.constraint_from_dict(record, where="file.jsonl:7")
    assert "file.jsonl:7" in str(info.value)


def test_tuple_params_roundtrip_through_json_lists():
    constraint = C.IncludeAllKeywords(keywords=("a", "b"))
    assert constraint.to_dict() == {"type": "keywords:include_all", "params": {"keywords": ["a", "b"]}}
    assert C.constraint_from_dict({"type": "keywords:include_all", "params": {"keywords": ["a", "b"]}}) == constraint


@pytest.mark.parametrize(
    "combo",
    [
        [C.Lowercase(), C.Uppercase()],
        [C.MinWords(n=200), C.MaxWords(n=100)],
        [C.MinWords(n=90), C.MaxWords(n=100)],  # satisfiable only with no room to answer: rejected by margin
        [C.MinSentences(n=8), C.MaxSentences(n=5)],
        [C.MinWords(n=300), C.MaxSentences(n=3)],
        [C.IncludeKeyword(keyword="very", n=1), C.ExcludeWord(word="very")],
        [C.StartWord(word="Well"), C.ExcludeWord(word="well")],
        [C.EndPhrase(phrase="Hope this helps!"), C.NoExclamation()],
        [C.EndPhrase(phrase="Any other questions?"), C.Lowercase()],
        [C.EndPhrase(phrase="Any other questions?"), C.EndWithQuestion()],
        [C.NumberedList(n=3), C.NoDigits()],
        [C.Sections(marker="SECTION", n=2), C.NoDigits()],
        [C.JsonFormat(), C.Bullets(n=2)],
        [C.JsonFormat(), C.Headings(n=1)],
        [C.JsonFormat(), C.Quotation()],
        [C.Paragraphs(n=3), C.Title()],
        [C.Paragraphs(n=3), C.DividerParagraphs(n=3)],
        [C.MaxSentences(n=3), C.Bullets(n=3)],
        [C.RepeatPrompt(request="Explain tides."), C.StartWord(word="Sure")],
        [C.RepeatPrompt(request="Explain tides, briefly."), C.NoCommas()],
        [C.RepeatPrompt(request="Why is it 5?"), C.QuestionMarks(n=1), C.EndWithQuestion()],
        [C.NthParagraphFirstWord(n=2, nth=1, first_word="Firstly"), C.StartWord(word="Well")],
        [C.Paragraphs(n=5), C.MaxWords(n=50)],
        [C.Paragraphs(n=4), C.MaxSentences(n=3)],
        [C.Quotation(), C.Bullets(n=2)],
        [C.CapitalWordFrequency(relation="at_least", n=2), C.Lowercase()],
        [C.NoCommas(), C.NoCommas()],
    ],
)
def test_find_conflicts_rejects_contradictory_or_ambiguous_combos(combo):
    assert C.find_conflicts(combo), [c.type_id for c in combo]
    assert not C.compatible(combo)


@pytest.mark.parametrize(
    "combo",
    [
        [C.MinWords(n=40), C.MaxWords(n=100)],
        [C.Lowercase(), C.StartWord(word="Certainly"), C.Postscript(marker="P.S.")],
        [C.Uppercase(), C.Sections(marker="Section", n=2), C.IncludeKeyword(keyword="Friday", n=1)],
        [C.NthParagraphFirstWord(n=2, nth=2, first_word="Firstly"), C.StartWord(word="Well")],
        [C.QuestionMarks(n=2), C.EndPhrase(phrase="Any other questions?")],
        [C.JsonFormat(), C.IncludeKeyword(keyword="sun", n=2), C.NoDigits()],
        [C.Paragraphs(n=3), C.MaxSentences(n=4)],
    ],
)
def test_find_conflicts_accepts_compatible_combos(combo):
    assert C.find_conflicts(combo) == []
