// align label: order K responses best -> worst, with ties and flags, by mouse or keyboard.
//
// Responses are untrusted model output. Everything they contain reaches the page through
// textContent / text nodes built by renderMarkdown below; this file never assigns innerHTML.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const FLAG_KEYS = { h: "harmful", o: "off-topic", u: "unreadable" };
const FLAG_NAMES = ["harmful", "off-topic", "unreadable"];

const S = {
  view: "loading",   // loading | task | done
  task: null,        // {index, total, task_id, prompt, responses, label}
  order: [],         // response indices, best first
  tie: new Set(),    // responses tied with the one above them
  flags: [],         // per response: Set of flag names
  selected: null,    // response index
  picks: 0,          // responses placed by number keys since the last reset
  cards: [],         // per response: {li, rank, tieBadge, flagBadges, tieBtn, flagBtns}
  progress: null,
  busy: false,
  lastIndex: null,
  dragging: null,    // response being dragged
};

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ------------------------------------------------------------------ safe markdown

// Inline spans: `code`, **bold**, __bold__, *italic*, _italic_. Built as DOM nodes from text.
const INLINE = String.raw`(\x60+)([^\x60]|[^\x60][\s\S]*?[^\x60])\1(?!\x60)` +
  String.raw`|\*\*(?=\S)([\s\S]*?\S)\*\*` +
  String.raw`|(?<![A-Za-z0-9])__(?=\S)([\s\S]*?\S)__(?![A-Za-z0-9_])` +
  String.raw`|\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)` +
  String.raw`|(?<![A-Za-z0-9_])_(?=[^\s_])([\s\S]*?[^\s_])_(?![A-Za-z0-9_])`;

function renderInline(text, parent, depth) {
  if (depth > 6) { parent.append(document.createTextNode(text)); return; }
  const re = new RegExp(INLINE, "g");
  let last = 0;
  let m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    if (m[1] !== undefined) {
      parent.append(el("code", null, m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2]));
    } else if (m[3] !== undefined || m[4] !== undefined) {
      const strong = el("strong");
      renderInline(m[3] !== undefined ? m[3] : m[4], strong, depth + 1);
      parent.append(strong);
    } else {
      const em = el("em");
      renderInline(m[5] !== undefined ? m[5] : m[6], em, depth + 1);
      parent.append(em);
    }
    last = re.lastIndex;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

function renderLines(lines, parent) {
  lines.forEach((line, n) => {
    if (n) parent.append(el("br"));
    renderInline(line, parent, 0);
  });
}

const FENCE = /^\s{0,3}(\x60{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const ITEM = /^(\s*)(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/;

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

// Block structure: fenced code, headings, rules, quotes, lists, paragraphs (line breaks kept).
function renderMarkdown(text, parent, depth) {
  depth = depth || 0;
  if (!text.trim()) {
    if (depth === 0) parent.append(el("span", "empty", "(empty response)"));
    return;
  }
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      const close = new RegExp("^\\s{0,3}" + (fence[1][0] === "~" ? "~" : "\\x60") + "{" + fence[1].length + ",}\\s*$");
      const body = [];
      i++;
      while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
      i++;  // the closing fence (or the end of the text)
      const pre = el("pre");
      const code = el("code", null, body.join("\n"));
      if (fence[2]) code.dataset.lang = fence[2];
      pre.append(code);
      parent.append(pre);
      continue;
    }
    if (!line.trim()) { i++; continue; }
    const heading = line.match(HEADING);
    if (heading) {
      const h = el(["h3", "h4", "h5"][Math.min(heading[1].length, 3) - 1]);
      renderInline(heading[2], h, 0);
      parent.append(h);
      i++;
      continue;
    }
    if (RULE.test(line)) { parent.append(el("hr")); i++; continue; }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].match(QUOTE)[1]);
      const quote = el("blockquote");
      if (depth < 4) renderMarkdown(inner.join("\n"), quote, depth + 1);
      else renderLines(inner, quote);
      parent.append(quote);
      continue;
    }
    const item = line.match(ITEM);
    if (item) {
      const ordered = item[3] !== undefined;
      const list = el(ordered ? "ol" : "ul");
      if (ordered && item[3] !== "1") list.start = parseInt(item[3], 10);
      while (i < lines.length) {
        const m = lines[i].match(ITEM);
        if (!m || (m[3] !== undefined) !== ordered) break;
        const itemLines = [m[4]];
        i++;
        // Continuation lines: indented text that does not start a new block.
        while (i < lines.length && lines[i].trim() && /^\s+/.test(lines[i]) && !ITEM.test(lines[i])) {
          itemLines.push(lines[i++].trim());
        }
        const li = el("li");
        renderLines(itemLines, li);
        list.append(li);
      }
      parent.append(list);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && (para.length === 0 || !startsBlock(lines[i]))) para.push(lines[i++]);
    const p = el("p");
    renderLines(para, p);
    parent.append(p);
  }
}

// ------------------------------------------------------------------ server

async function api(method, path, body) {
  const headers = {};
  if (TOKEN) headers["X-Label-Token"] = TOKEN;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data;
  try { data = await resp.json(); } catch (err) { data = { error: `HTTP ${resp.status}` }; }
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

// ------------------------------------------------------------------ state → page

function groups() {
  const out = [];
  S.order.forEach((r, pos) => {
    if (pos > 0 && S.tie.has(r)) out[out.length - 1].push(r);
    else out.push([r]);
  });
  return out;
}

function setMessage(text, isError) {
  const msg = $("message");
  msg.textContent = text || "";
  msg.classList.toggle("error", Boolean(isError));
}

function renderProgress() {
  const p = S.progress;
  if (!p) return;
  const at = S.view === "task" && S.task ? `Task ${S.task.index + 1} of ${p.total}` : `${p.total} tasks`;
  $("progress-text").textContent = `${at} · ${p.labeled} ranked · ${p.skipped} skipped · ${p.total - p.done} to go`;
  $("progress-fill").style.width = `${p.total ? (100 * p.done) / p.total : 0}%`;
  $("labeler").textContent = `labeler: ${p.labeler}`;
}

function renderPrompt(prompt) {
  const box = $("prompt");
  box.replaceChildren();
  if (typeof prompt === "string") { renderMarkdown(prompt, box); return; }
  for (const turn of prompt) {
    const div = el("div", "turn");
    div.append(el("div", "turn-role", turn.role));
    const body = el("div", "md");
    renderMarkdown(turn.content, body);
    div.append(body);
    box.append(div);
  }
}

function buildCard(r) {
  const li = el("li", "card");
  li.dataset.response = String(r);
  li.setAttribute("aria-label", `Response ${r + 1}`);
  const rankCol = el("div", "rank-col");
  const rank = el("div", "rank");
  const grip = el("span", "grip", "⠿");
  grip.title = "Drag to move";
  grip.setAttribute("aria-hidden", "true");
  rankCol.append(rank, grip);

  const body = el("div", "card-body");
  const head = el("div", "card-head");
  const name = el("span", "resp-name", `Response ${r + 1}`);
  const key = el("kbd", null, String(r + 1));
  const tieBadge = el("span", "tie-badge", "= tied with the one above");
  const flagBadges = el("span", "flag-badges");
  head.append(name, key, tieBadge, flagBadges);
  const md = el("div", "md response-text");
  renderMarkdown(S.task.responses[r], md);

  const tools = el("div", "card-tools");
  const tieBtn = el("button", "chip chip-tie", "= Tie with above");
  tieBtn.type = "button";
  tieBtn.append(el("kbd", null, "T"));
  tieBtn.addEventListener("click", () => { select(r); toggleTie(r); });
  tools.append(tieBtn);
  const flagBtns = {};
  for (const flag of FLAG_NAMES) {
    const btn = el("button", "chip chip-flag", `⚑ ${flag}`);
    btn.type = "button";
    btn.dataset.flag = flag;
    btn.append(el("kbd", null, flag[0].toUpperCase()));
    btn.addEventListener("click", () => { select(r); toggleFlag(r, flag); });
    flagBtns[flag] = btn;
    tools.append(btn);
  }
  body.append(head, md, tools);
  li.append(rankCol, body);

  li.addEventListener("click", (e) => { if (!e.target.closest("button")) select(r); });
  // Drag by the handle only, so text in a response stays selectable.
  grip.addEventListener("mousedown", () => { li.draggable = true; });
  li.addEventListener("mouseup", () => { li.draggable = false; });
  li.addEventListener("dragstart", (e) => {
    e.dataTransfer.setData("text/plain", String(r));
    e.dataTransfer.effectAllowed = "move";
    li.classList.add("dragging");
    S.dragging = r;
  });
  li.addEventListener("dragend", () => {
    li.draggable = false;
    li.classList.remove("dragging");
    S.dragging = null;
    clearDropMarks();
  });
  li.addEventListener("dragover", (e) => {
    if (S.dragging === null) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "move";
    clearDropMarks();
    li.classList.add(dropBefore(e, li) ? "drop-before" : "drop-after");
  });
  li.addEventListener("drop", (e) => {
    e.preventDefault();
    const moving = S.dragging;
    clearDropMarks();
    if (moving === null || moving === r) return;
    const before = dropBefore(e, li);
    const without = S.order.filter((x) => x !== moving);
    const at = without.indexOf(r) + (before ? 0 : 1);
    S.order = [...without.slice(0, at), moving, ...without.slice(at)];
    S.selected = moving;
    renderList();
  });
  return { li, rank, tieBadge, flagBadges, tieBtn, flagBtns };
}

function dropBefore(e, li) {
  const box = li.getBoundingClientRect();
  return e.clientY < box.top + box.height / 2;
}

function clearDropMarks() {
  for (const c of S.cards) c.li.classList.remove("drop-before", "drop-after");
}

function renderList() {
  const list = $("responses");
  let group = 0;
  S.order.forEach((r, pos) => {
    const c = S.cards[r];
    const tied = pos > 0 && S.tie.has(r);
    if (pos > 0 && !tied) group++;
    c.rank.textContent = String(group + 1);
    c.li.classList.toggle("tied", tied);
    c.li.classList.toggle("selected", S.selected === r);
    c.li.classList.toggle("flagged", S.flags[r].size > 0);
    c.li.setAttribute("aria-selected", String(S.selected === r));
    c.tieBadge.hidden = !tied;
    c.tieBtn.setAttribute("aria-pressed", String(tied));
    c.tieBtn.disabled = pos === 0;
    c.flagBadges.replaceChildren(...[...S.flags[r]].map((f) => el("span", "flag-badge", `⚑ ${f}`)));
    for (const flag of FLAG_NAMES) c.flagBtns[flag].setAttribute("aria-pressed", String(S.flags[r].has(flag)));
    if (list.children[pos] !== c.li) list.insertBefore(c.li, list.children[pos] || null);
  });
  const k = S.order.length;
  $("pick-hint").textContent = S.picks > 0 && S.picks < k
    ? `number keys: next pick goes to place ${S.picks + 1} (Esc restarts)` : "";
}

function renderStatus() {
  const chip = $("task-status");
  const label = S.task.label;
  chip.className = "status-chip" + (label ? (label.skipped ? " skipped" : " labeled") : "");
  chip.textContent = label ? (label.skipped ? "skipped" : "ranked ✓ (submit again to replace)") : "not labeled yet";
}

function loadTask(task) {
  S.task = task;
  const k = task.responses.length;
  S.order = [...Array(k).keys()];
  S.tie = new Set();
  S.flags = Array.from({ length: k }, () => new Set());
  S.selected = null;
  S.picks = 0;
  const label = task.label;
  if (label && label.ranking) {
    S.order = label.ranking.flat();
    for (const g of label.ranking) g.slice(1).forEach((r) => S.tie.add(r));
  }
  if (label && label.flags) label.flags.forEach((fs, r) => fs.forEach((f) => S.flags[r].add(f)));
  $("task-title").textContent = `Task ${task.index + 1}`;
  renderPrompt(task.prompt);
  S.cards = [...Array(k).keys()].map(buildCard);
  $("responses").replaceChildren();
  renderList();
  renderStatus();
  $("back").disabled = task.index === 0;
  history.replaceState(null, "", `#task-${task.index + 1}`);
}

async function showTask(n, message) {
  try {
    const task = await api("GET", `/api/task/${n}`);
    S.view = "task";
    $("done-view").hidden = true;
    $("task-view").hidden = false;
    loadTask(task);
    setMessage(message || "");
    renderProgress();
    window.scrollTo(0, 0);
  } catch (err) {
    setMessage(err.message, true);
  }
}

function showDone() {
  S.view = "done";
  $("task-view").hidden = true;
  $("done-view").hidden = false;
  const p = S.progress;
  $("done-text").textContent = `${p.labeled} ranked and ${p.skipped} skipped of ${p.total} tasks, as ${p.labeler}. ` +
    "Every label is saved; you can close this page, or go back and change any of them.";
  history.replaceState(null, "", "#done");
  renderProgress();
}

// ------------------------------------------------------------------ actions

function select(r) {
  S.selected = r;
  renderList();
  S.cards[r].li.scrollIntoView({ block: "nearest" });
}

function move(r, delta) {
  const pos = S.order.indexOf(r);
  const to = pos + delta;
  if (to < 0 || to >= S.order.length) return;
  S.order.splice(pos, 1);
  S.order.splice(to, 0, r);
  renderList();
  S.cards[r].li.scrollIntoView({ block: "nearest" });
}

// Number keys: each press puts response n right after the ones already picked.
function pick(r) {
  const k = S.order.length;
  const pos = S.order.indexOf(r);
  if (pos < S.picks) S.picks--;  // picked again: it moves to the end of the picked ones
  S.order.splice(pos, 1);
  S.order.splice(S.picks, 0, r);
  S.picks++;
  if (S.picks >= k) S.picks = 0;
  select(r);
}

function toggleTie(r) {
  if (S.order.indexOf(r) === 0) { setMessage("The top response has nothing above it to tie with.", true); return; }
  if (S.tie.has(r)) S.tie.delete(r); else S.tie.add(r);
  renderList();
}

function toggleFlag(r, flag) {
  if (S.flags[r].has(flag)) S.flags[r].delete(flag); else S.flags[r].add(flag);
  renderList();
}

function resetTask() {
  const k = S.order.length;
  S.order = [...Array(k).keys()];
  S.tie = new Set();
  S.flags = Array.from({ length: k }, () => new Set());
  S.selected = null;
  S.picks = 0;
  renderList();
  setMessage("Order, ties and flags reset (nothing is saved until you submit).");
}

async function submit(skipped) {
  if (S.busy || S.view !== "task") return;
  S.busy = true;
  const task = S.task;
  const body = {
    task_id: task.task_id,
    ranking: skipped ? null : groups(),
    flags: S.flags.map((fs) => FLAG_NAMES.filter((f) => fs.has(f))),
    skipped,
  };
  try {
    const res = await api("POST", "/api/submit", body);
    S.progress = res.progress;
    S.lastIndex = task.index;
    const what = `${skipped ? "Skipped" : "Saved"} task ${task.index + 1}${res.replaced ? " (replaced your earlier label)" : ""}.`;
    if (res.next === null) showDone();
    else await showTask(res.next, what);
  } catch (err) {
    setMessage(err.message, true);
  } finally {
    S.busy = false;
  }
}

function go(n) {
  if (S.busy || !S.progress) return;
  if (n >= 0 && n < S.progress.total) showTask(n);
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const target = e.target;
  if (target && target.closest && target.closest("button") && (e.key === "Enter" || e.key === " ")) return;
  if (S.view === "done") {
    if (e.key === "ArrowLeft" || e.key === "Backspace") { e.preventDefault(); go(S.lastIndex ?? S.progress.total - 1); }
    return;
  }
  if (S.view !== "task") return;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const k = S.order.length;
  const sel = S.selected;
  let handled = true;
  if (/^[1-9]$/.test(key) && !e.shiftKey) {
    const r = Number(key) - 1;
    if (r < k) pick(r); else handled = false;
  } else if (key === "ArrowUp" || key === "ArrowDown") {
    const delta = key === "ArrowUp" ? -1 : 1;
    if (sel === null) select(S.order[delta < 0 ? k - 1 : 0]);
    else if (e.shiftKey) {
      const pos = S.order.indexOf(sel) + delta;
      if (pos >= 0 && pos < k) select(S.order[pos]);
    } else move(sel, delta);
  } else if (key === "t") {
    if (sel === null) setMessage("Select a response first (click it or press its number).", true);
    else toggleTie(sel);
  } else if (key in FLAG_KEYS) {
    if (sel === null) setMessage("Select a response first (click it or press its number).", true);
    else toggleFlag(sel, FLAG_KEYS[key]);
  } else if (key === "Enter") {
    submit(false);
  } else if (key === "s") {
    submit(true);
  } else if (key === "ArrowLeft" || key === "Backspace") {
    go(S.task.index - 1);
  } else if (key === "ArrowRight") {
    go(S.task.index + 1);
  } else if (key === "r") {
    resetTask();
  } else if (key === "Escape") {
    S.selected = null;
    S.picks = 0;
    renderList();
  } else {
    handled = false;
  }
  if (handled) e.preventDefault();
}

async function start() {
  document.addEventListener("keydown", onKey);
  // A mouse click leaves focus on the button, where Enter would press it again instead of submitting.
  document.addEventListener("click", (e) => {
    const button = e.target.closest && e.target.closest("button");
    if (button && e.detail > 0) button.blur();
  });
  $("submit").addEventListener("click", () => submit(false));
  $("skip").addEventListener("click", () => submit(true));
  $("back").addEventListener("click", () => go(S.task.index - 1));
  $("reset").addEventListener("click", () => resetTask());
  $("done-back").addEventListener("click", () => go(S.lastIndex ?? S.progress.total - 1));
  $("done-first").addEventListener("click", () => go(0));
  try {
    S.progress = await api("GET", "/api/progress");
  } catch (err) {
    const fatal = $("fatal");
    fatal.textContent = `Cannot reach the labeling server: ${err.message}`;
    fatal.hidden = false;
    return;
  }
  const m = location.hash.match(/^#task-(\d+)$/);
  const asked = m ? Number(m[1]) - 1 : null;
  if (asked !== null && asked >= 0 && asked < S.progress.total) await showTask(asked);
  else if (S.progress.first_unlabeled === null) showDone();
  else await showTask(S.progress.first_unlabeled);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
