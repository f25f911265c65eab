"""The labeling page in a real headless Chromium (Playwright): rank by keyboard and by drag and drop,
tie, flag, skip, go back and relabel, then compare the labels file line by line; hostile responses
must render as text; a screenshot of a realistic task.

Needs Debian's chromium (``apt-get install chromium``) and ``pip install playwright`` (never
``playwright install``: the system browser is used). Without them the tests skip, unless
``ALIGN_REQUIRE_BROWSER=1`` (set in CI) turns the skip into a failure (the `browser` and `page`
fixtures in tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from align.preferences.label.server import running_server


def write_tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)


def order(page) -> list[int]:
    return page.eval_on_selector_all("#responses > li", "els => els.map(e => Number(e.dataset.response))")


def expect_title(page, text: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#task-title")).to_have_text(text, timeout=30_000)


def card(r: int) -> str:
    return f"li.card[data-response='{r}']"


TASKS = [
    {"prompt": "Say hi.", "responses": ["hi", "hello", "hey there"]},
    {"prompt": "Name a colour.", "responses": ["red", "blue", "green", "dog"]},
    {"prompt": "Is water wet?", "responses": ["yes", "no", "maybe"]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "responses": ["4", "5"]},
]


def test_rank_tie_flag_skip_back_and_relabel_in_the_browser(page, tmp_path):
    from playwright.sync_api import expect

    tasks = write_tasks(tmp_path / "tasks.jsonl", TASKS)
    out = tmp_path / "rankings.jsonl"
    with running_server(tasks, out, labeler="ann", token="t0k") as srv:
        open_page(page, srv.url)
        expect_title(page, "Task 1")
        expect(page.locator("#progress-text")).to_contain_text("Task 1 of 4")
        expect(page.locator(".legend")).to_be_visible()  # the keyboard legend is always on screen

        # Task 1, keyboard only: 3 then 1 picks the top two; ↓ moves response 1 below response 2;
        # T ties it with response 2; H flags it harmful; Enter submits.
        page.keyboard.press("3")
        page.keyboard.press("1")
        assert order(page) == [2, 0, 1]
        page.keyboard.press("ArrowDown")
        assert order(page) == [2, 1, 0]
        page.keyboard.press("t")
        page.keyboard.press("h")
        expect(page.locator(f"{card(0)} .tie-badge")).to_be_visible()
        expect(page.locator(f"{card(0)} .rank")).to_have_text("2")  # tied: same place as the one above
        page.keyboard.press("Shift+ArrowUp")  # select without moving
        assert order(page) == [2, 1, 0] and "selected" in page.get_attribute(card(1), "class")
        page.keyboard.press("Enter")

        # Task 2, mouse only: drag response 4 above response 1, then response 2 above response 4.
        expect_title(page, "Task 2")
        expect(page.locator("#message")).to_have_text("Saved task 1.")
        page.drag_and_drop(f"{card(3)} .grip", card(0), target_position={"x": 200, "y": 4})
        assert order(page) == [3, 0, 1, 2]
        page.drag_and_drop(f"{card(1)} .grip", card(3), target_position={"x": 200, "y": 4})
        assert order(page) == [1, 3, 0, 2]
        page.click(f"{card(2)} button[data-flag='off-topic']")
        page.click("#submit")

        # Task 3: skip it.
        expect_title(page, "Task 3")
        page.keyboard.press("s")

        # Task 4: go back twice; the earlier labels come back with the task.
        expect_title(page, "Task 4")
        expect(page.locator("#prompt")).to_contain_text("Be brief.")  # chat prompts show every turn
        page.keyboard.press("ArrowLeft")
        expect_title(page, "Task 3")
        expect(page.locator("#task-status")).to_have_text("skipped")
        page.click("#back")
        expect_title(page, "Task 2")
        expect(page.locator("#task-status")).to_contain_text("ranked")
        assert order(page) == [1, 3, 0, 2]
        assert page.get_attribute(f"{card(2)} button[data-flag='off-topic']", "aria-pressed") == "true"
        # Relabel task 2 in the original order by typing it; the flag stays.
        for key in "1234":
            page.keyboard.press(key)
        assert order(page) == [0, 1, 2, 3]
        page.keyboard.press("Enter")

        # The next task still unlabeled is task 4 (task 3 was skipped, which counts as done).
        expect_title(page, "Task 4")
        expect(page.locator("#message")).to_have_text("Saved task 2 (replaced your earlier label).")
        page.keyboard.press("2")
        page.keyboard.press("Enter")
        expect(page.locator("#done-view")).to_be_visible()
        expect(page.locator("#progress-text")).to_contain_text("3 ranked · 1 skipped · 0 to go")

        assert page.errors == []
        # A page load without the token is refused.
        assert page.goto(srv.url.split("?")[0]).status == 403
        ids = [srv.app.tasks[i].task_id for i in range(4)]

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == [
        {"prompt": "Say hi.", "responses": ["hi", "hello", "hey there"], "ranking": [[2], [1, 0]],
         "flags": [["harmful"], [], []], "skipped": False, "task_id": ids[0], "labeler": "ann"},
        {"prompt": "Name a colour.", "responses": ["red", "blue", "green", "dog"], "ranking": [[0], [1], [2], [3]],
         "flags": [[], [], ["off-topic"], []], "skipped": False, "task_id": ids[1], "labeler": "ann"},
        {"prompt": "Is water wet?", "responses": ["yes", "no", "maybe"], "flags": [[], [], []], "skipped": True,
         "task_id": ids[2], "labeler": "ann"},
        {"prompt": TASKS[3]["prompt"], "responses": ["4", "5"], "ranking": [[1], [0]], "flags": [[], []],
         "skipped": False, "task_id": ids[3], "labeler": "ann"},
    ]


def test_page_opens_at_the_first_unlabeled_task(page, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", TASKS)
    out = tmp_path / "rankings.jsonl"
    with running_server(tasks, out, labeler="bo") as srv:
        for n in (0, 1):
            task = srv.app.tasks[n]
            srv.app.submit({"task_id": task.task_id, "ranking": [list(range(task.k))]})
        open_page(page, srv.url)
        expect_title(page, "Task 3")
        from playwright.sync_api import expect

        expect(page.locator("#progress-text")).to_contain_text("2 ranked · 0 skipped · 2 to go")


HOSTILE = [
    "<script>window.__pwned=1</script>",
    "<img src=x onerror=window.__pwned=1>",
    "**bold** <b>not bold</b> `<script>window.__pwned=1</script>` [link](javascript:window.__pwned=1)",
    "```html\n<img src=x onerror=\"window.__pwned=1\">\n</code></pre><script>window.__pwned=1</script>\n```",
    "1. one\n2. *two* __three__\n\n- a\n- `b`\n\n> quoted <svg onload=window.__pwned=1>",
]


def test_hostile_responses_render_as_text(page, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl",
                        [{"prompt": "<img src=x onerror=window.__pwned=1> hi", "responses": HOSTILE}])
    with running_server(tasks, tmp_path / "r.jsonl") as srv:
        response = page.goto(srv.url)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.wait_for_timeout(300)  # time for any onerror/onload to fire
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("#main script, #main img, #main svg, #main b, #main a, #main iframe").count() == 0
        text = [page.inner_text(f"{card(r)} .response-text") for r in range(len(HOSTILE))]
        assert text[0] == HOSTILE[0]
        assert text[1] == HOSTILE[1]
        assert page.inner_text("#prompt") == "<img src=x onerror=window.__pwned=1> hi"
        # Markdown still renders, as elements holding text.
        assert page.inner_text(f"{card(2)} .response-text strong") == "bold"
        assert "<b>not bold</b>" in text[2] and "[link](javascript:window.__pwned=1)" in text[2]
        assert page.inner_text(f"{card(2)} .response-text code") == "<script>window.__pwned=1</script>"
        assert page.inner_text(f"{card(3)} pre code") == HOSTILE[3].split("\n", 1)[1].rsplit("\n", 1)[0]
        assert page.eval_on_selector_all(f"{card(4)} ol > li", "els => els.map(e => e.textContent)") == [
            "one", "two three"]
        assert page.inner_text(f"{card(4)} ol em") == "two" and page.inner_text(f"{card(4)} ol strong") == "three"
        assert page.locator(f"{card(4)} ul > li").count() == 2
        assert page.inner_text(f"{card(4)} blockquote") == "quoted <svg onload=window.__pwned=1>"
        assert page.evaluate("typeof window.__pwned") == "undefined"


SCREENSHOT_TASK = {
    "prompt": "Explain the difference between a list and a tuple in Python, with a short example.",
    "responses": [
        "A **list** is mutable: you can add, remove and change items after creating it. A **tuple** is "
        "immutable, so it is fixed once made; that makes tuples hashable (usable as dict keys) when their "
        "items are.\n\n```python\nxs = [1, 2, 3]\nxs.append(4)      # fine\npoint = (3, 4)\n"
        "point[0] = 5      # TypeError\n```",
        "Lists use square brackets and tuples use parentheses. Both hold ordered items.",
        "Key differences:\n\n1. *Mutability*: lists can change, tuples cannot.\n2. *Use*: lists for collections "
        "of similar items, tuples for fixed records like `(x, y)`.\n3. *Speed*: tuples are slightly faster to "
        "create.\n\nExample: `coords = (1.5, 2.0)` vs `names = [\"ann\", \"bo\"]`.",
        "Python was created by Guido van Rossum and first released in 1991. It is popular for data science.",
    ],
}


def test_screenshot_of_a_realistic_task(page, tmp_path):
    """Ranks 3 > 1 = 2 > 4 with response 4 flagged off-topic; set ALIGN_LABEL_SCREENSHOT=path to keep the PNG."""
    tasks = write_tasks(tmp_path / "tasks.jsonl", [SCREENSHOT_TASK, {"prompt": "x", "responses": ["a", "b"]},
                                                   {"prompt": "y", "responses": ["a", "b"]}])
    page.set_viewport_size({"width": 1280, "height": 1080})  # the whole task fits: no sticky bar mid-picture
    with running_server(tasks, tmp_path / "r.jsonl", labeler="ann") as srv:
        open_page(page, srv.url)
        for key in "3124":
            page.keyboard.press(key)
        page.click(f"{card(0)} .resp-name")
        page.keyboard.press("t")
        page.click(f"{card(3)} .resp-name")
        page.keyboard.press("o")
        page.click(f"{card(2)} .resp-name")
        assert order(page) == [2, 0, 1, 3]
        assert page.eval_on_selector_all(".rank", "els => els.map(e => e.textContent)") == ["1", "1", "2", "3"]
        # Nothing wider than the window, the legend beside the list.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        legend, main = page.locator(".legend").bounding_box(), page.locator("#main").bounding_box()
        assert legend["x"] > main["x"] + main["width"] - 1
        page.evaluate("window.scrollTo(0, 0)")
        path = tmp_path / "label-page.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 20_000
        if os.environ.get("ALIGN_LABEL_SCREENSHOT"):
            shutil.copyfile(path, os.environ["ALIGN_LABEL_SCREENSHOT"])
    assert page.errors == []
