"""The README's and CONTRIBUTING's commands, layout and links exist as written (plain text checks, no torch)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_INDEX = RESULTS / "README.md"

INSTALL_AND_RUN = "bash scripts/bootstrap.sh && .venv/bin/align run recipes/quickstart.yaml"
TEST_COMMAND = "bash scripts/bootstrap.sh --dev && .venv/bin/python -m pytest -q"
README_MAX_LINES = 220
# Top-level folders that are not part of the source tree (ignored outputs, tool folders).
IGNORED_TOP = {"runs", "build", "shared", "__pycache__", "align.egg-info"}

LINKED_DOCS = [README, CONTRIBUTING, RESULTS_INDEX, *sorted((ROOT / "docs").glob("*.md"))]

# A markdown link or image: [text](target) / ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# A file a Layout line names in its description: a name with an extension we ship.
LAYOUT_FILE = re.compile(r"(?<![\w/.-])([\w/.-]*[\w-]\.(?:py|jsonl|json|txt|md|sh|yaml))\b")
# A folder a Layout line names in its description: `static/`, `data/` (not `TRL/transformers`).
LAYOUT_DIR = re.compile(r"(?<![\w/.-])([\w-]+/)(?=[\s,;)]|$)")


def _code_block(text: str, heading: str) -> str:
    """The first ``` block after the markdown heading `heading`."""
    after = text.split(f"\n{heading}\n", 1)
    assert len(after) == 2, f"no heading {heading!r}"
    match = re.search(r"```[^\n]*\n(.*?)\n```", after[1], re.S)
    assert match, f"no code block under {heading!r}"
    return match.group(1)


def _layout() -> dict[str, str]:
    """CONTRIBUTING's Layout block as {path: description}, continuation lines joined to their path."""
    entries: dict[str, str] = {}
    last = None
    for line in _code_block(CONTRIBUTING.read_text(), "## Layout").splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            assert last is not None, f"Layout block starts with a continuation line: {line!r}"
            entries[last] += " " + line.strip()
        else:
            path, _, description = line.partition(" ")
            assert path not in entries, f"{path} is in the Layout block twice"
            entries[path] = description.strip()
            last = path
    return entries


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


# (a) CONTRIBUTING's Layout block ---------------------------------------------------------------------


def test_layout_paths_exist():
    layout = _layout()
    assert layout, "CONTRIBUTING.md has an empty Layout block"
    for path in layout:
        assert path.endswith("/"), f"Layout entry {path!r}: name folders, ending with '/'"
        assert (ROOT / path).is_dir(), f"CONTRIBUTING.md's Layout names {path}, which does not exist"


def test_layout_files_named_in_descriptions_exist():
    missing = []
    for path, description in _layout().items():
        for name in LAYOUT_FILE.findall(description):
            target = ROOT / name if "/" in name else ROOT / path / name
            if not target.is_file():
                missing.append(f"{path}: {name}")
        for name in LAYOUT_DIR.findall(description):
            if not (ROOT / path / name).is_dir():
                missing.append(f"{path}: {name}")
    assert not missing, f"CONTRIBUTING.md's Layout names files that do not exist: {missing}"


def test_layout_names_every_package_of_align():
    layout = _layout()
    packages = sorted(p.parent.relative_to(ROOT).as_posix() + "/" for p in (ROOT / "align").glob("*/__init__.py"))
    assert packages, "no packages found under align/"
    missing = [p for p in packages if p not in layout]
    assert not missing, f"packages missing from CONTRIBUTING.md's Layout: {missing}"


def test_layout_names_every_module():
    # Every module of align/ and its packages, data_gen/ and eval/: a newcomer finds each one on the map.
    layout = _layout()
    missing = []
    for folder in [*(p for p in layout if p.startswith("align/")), "align/", "data_gen/", "eval/"]:
        named = set(LAYOUT_FILE.findall(layout.get(folder, "")))
        for module in sorted((ROOT / folder).glob("*.py")):
            if module.name not in {"__init__.py", "__main__.py"} and module.name not in named:
                missing.append(folder + module.name)
    assert not missing, f"modules missing from CONTRIBUTING.md's Layout: {missing}"


def _top_level_folders() -> set[str]:
    """Top-level folders of the source tree: git's tracked files when this is a checkout, else the disk."""
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        files = ""
    if files.strip():
        return {f.split("/", 1)[0] + "/" for f in files.splitlines() if "/" in f and not f.startswith("shared/")}
    return {p.name + "/" for p in ROOT.iterdir()
            if p.is_dir() and (p.name == ".ci" or not p.name.startswith(".")) and p.name not in IGNORED_TOP}


def test_layout_names_every_top_level_folder():
    layout = _layout()
    tracked = _top_level_folders()
    missing = sorted(t for t in tracked if t not in layout and not any(k.startswith(t) for k in layout))
    assert not missing, f"top-level folders missing from CONTRIBUTING.md's Layout: {missing}"



def test_layout_block_is_only_in_contributing():
    assert "## Layout" not in README.read_text(), "the Layout block lives in CONTRIBUTING.md only"
    assert "CONTRIBUTING.md#layout" in README.read_text()


# (b) the README's two commands, and CI -------------------------------------------------------------


@pytest.mark.parametrize("command", [INSTALL_AND_RUN, TEST_COMMAND])
def test_readme_setup_commands_verbatim(command):
    blocks = re.findall(r"```bash\n(.*?)\n```", README.read_text(), re.S)
    assert command in [b.strip() for b in blocks], f"README.md lost its set-up command block: {command}"


def test_setup_command_files_exist():
    assert (ROOT / "scripts" / "bootstrap.sh").is_file()
    assert (ROOT / "recipes" / "quickstart.yaml").is_file()
    assert "--dev" in (ROOT / "scripts" / "bootstrap.sh").read_text()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert TEST_COMMAND in lines, ".ci/run must run the README's test command as written"


# (c) links -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc):
    broken = []
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no heading for #{anchor})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"


# (d) recipes and results named in the docs -----------------------------------------------------------


def test_recipes_named_in_readme_exist():
    text = README.read_text()
    named = set(re.findall(r"recipes/([\w.-]+\.yaml)", text)) | set(re.findall(r"`([\w-]+\.yaml)`", text))
    assert "quickstart.yaml" in named
    missing = sorted(n for n in named if not (ROOT / "recipes" / n).is_file())
    assert not missing, f"README.md names recipes that do not exist: {missing}"


def test_every_recipe_is_in_the_readme_table():
    text = README.read_text()
    missing = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml") if f"`{p.name}`" not in text)
    assert not missing, f"recipes missing from README.md's table: {missing}"


def test_every_result_file_is_indexed():
    # Every file, companions (.json data, .png plots) included: each is linked from the index.
    index = RESULTS_INDEX.read_text()
    linked = {t.partition("#")[0] for t in LINK.findall(index)}
    missing = sorted(p.name for p in RESULTS.iterdir() if p.is_file() and p.name != "README.md" and p.name not in linked)
    assert not missing, f"benchmarks/results/README.md does not link: {missing}"


def test_superseded_results_are_marked():
    index = RESULTS_INDEX.read_text()
    head, marker, superseded = index.partition("## Superseded")
    assert marker, "benchmarks/results/README.md has no Superseded section"
    assert "constraint-only labeler" in superseded and "reward hacking" in superseded
    for name in sorted(p.name for p in RESULTS.glob("*.md") if p.name.startswith(("alignment", "reward_data"))):
        assert f"]({name})" in superseded and f"]({name})" not in head, f"{name} must be listed as superseded"


# (e) README length, and what the lead fills in -------------------------------------------------------


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_readme_quickstart_section():
    text = README.read_text()
    section = text.split("## What the quickstart shows", 1)
    assert len(section) == 2
    assert "<!-- quickstart-results -->" in section[1].split("\n## ", 1)[0]
    assert "benchmarks/results/README.md" in section[1].split("\n## ", 1)[0]
