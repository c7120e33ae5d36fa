"use strict";
/* captionkit caption report: renders the embedded JSON (no framework, no network except the local server's API). */
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const PAGE = 120;            // cards added per step while scrolling
  const TAGS_SHOWN = 80;       // tag rows before "show all"
  const LIST_SHOWN = 300;      // names listed under "without a caption" / "failed"
  const $ = (id) => document.getElementById(id);
  const editable = !!DATA.editable;
  const sepCore = (DATA.separator || ", ").trim();
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  const failures = new Map(DATA.failures);
  const selected = new Set();
  const state = { text: [], include: [], exclude: [], status: "all", bucket: -1, sort: "name", asc: true };
  let shown = [], rendered = 0, showAllTags = false;
  const nodes = new Map();     // image id -> rendered card
  const drafts = new Map();    // image id -> {text, base}: unsaved edits survive filtering and re-rendering

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function splitTags(line) {
    const parts = sepCore ? line.split(sepCore) : line.split(/\s+/);
    return parts.map((s) => s.trim()).filter(Boolean);
  }
  const tagKey = (t) => t.replace(/_/g, " ").trim().split(/\s+/).join(" ");
  const fkey = (t) => tagKey(t).toLowerCase();
  const fmt = (n) => n.toLocaleString("en-US");
  function encodePart(s) {  // a name that is not UTF-8 keeps each such byte as U+DC80..U+DCFF (surrogateescape)
    let out = "", start = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c < 0xD800 || c > 0xDFFF) continue;
      const next = s.charCodeAt(i + 1);
      if (c <= 0xDBFF && next >= 0xDC00 && next <= 0xDFFF) { i++; continue; }  // a pair: an ordinary character
      const byte = c >= 0xDC80 && c <= 0xDCFF ? "%" + (c - 0xDC00).toString(16).toUpperCase() : "%EF%BF%BD";
      out += encodeURIComponent(s.slice(start, i)) + byte;
      start = i + 1;
    }
    return out + encodeURIComponent(s.slice(start));
  }
  const url = (base, rel) => base + rel.split("/").map(encodePart).join("/");

  function derive(it) {
    const c = it.row.c;
    it.lines = c == null ? [] : c.split("\n").filter((l) => l.trim());
    const first = it.lines.length ? splitTags(it.lines[0]) : [];
    it.words = it.lines.length ? it.lines[0].split(/\s+/).filter(Boolean).length : 0;
    it.isTags = first.length >= 2 || (first.length === 1 && it.words <= 4);  // a sentence caption has no tags
    it.tags = it.isTags ? first : [];
    it.keys = new Set(it.tags.map(fkey));
    it.len = c == null ? -1 : c.length;
    it.hay = (it.row.p + "\n" + (c || "")).toLowerCase();
    it.failed = failures.has(it.row.p);
  }
  /* ---------- token counts per text encoder (row.k: counts in TOKENS order, row.x: words lost when cut) ---------- */
  const TOKENS = DATA.tokens || [];
  const tokenName = (e) => e.key === "clip" ? "CLIP" : e.key.toUpperCase();
  function tokenCount(it, n) { return it.row.k && !it.row.stale ? it.row.k[n] : null; }
  function isCut(it, n) { const c = tokenCount(it, n); return c !== null && c > TOKENS[n].limit; }

  const items = DATA.images.map((row, i) => ({ i: i, row: row }));
  items.forEach(derive);
  const byPath = new Map(items.map((it) => [it.row.p, it]));

  /* ---------- filtering and sorting ---------- */
  function readFilters() {
    state.text = $("filter-text").value.toLowerCase().split(/\s+/).filter(Boolean);
    const terms = $("filter-tags").value.split(",").map((s) => s.trim()).filter(Boolean);
    state.include = terms.filter((t) => !t.startsWith("-")).map(fkey);
    state.exclude = terms.filter((t) => t.startsWith("-")).map((t) => fkey(t.slice(1))).filter(Boolean);
    state.status = $("filter-status").value;
    state.sort = $("sort-key").value;
  }
  function matches(it) {
    const r = it.row;
    if (state.status === "captioned" && r.c == null) return false;
    if (state.status === "missing" && r.c != null) return false;
    if (state.status === "failed" && !it.failed) return false;
    if (state.status === "selected" && !selected.has(r.p)) return false;
    if (state.status.startsWith("cut:") && !isCut(it, Number(state.status.slice(4)))) return false;
    if (state.bucket >= 0 && r.b !== state.bucket) return false;
    for (const w of state.text) if (!it.hay.includes(w)) return false;
    for (const k of state.include) if (!it.keys.has(k)) return false;
    for (const k of state.exclude) if (it.keys.has(k)) return false;
    return true;
  }
  function compare(a, b) {
    let d = 0;
    if (state.sort === "tags") d = a.tags.length - b.tags.length;
    else if (state.sort === "length") d = a.len - b.len;
    else if (state.sort === "tokens") d = (tokenCount(a, 0) ?? -1) - (tokenCount(b, 0) ?? -1);
    if (d !== 0) return state.asc ? d : -d;
    d = collator.compare(a.row.p, b.row.p);  // ties by name, A to Z
    return state.asc || state.sort !== "name" ? d : -d;
  }

  /* ---------- the grid ---------- */
  function captionBlock(it) {
    const box = el("div", "caption");
    const r = it.row;
    if (r.c == null) {
      box.appendChild(el("span", "none", "no caption"));
      return box;
    }
    if (!it.lines.length) {
      box.appendChild(el("span", "none", "empty caption"));
      return box;
    }
    if (it.tags.length >= 2) {
      const tags = el("div", "tags line1");
      for (const t of it.tags) {
        const chip = el("span", "tag", t);
        chip.title = "filter by this tag";
        chip.addEventListener("click", () => toggleTagFilter(t));
        tags.appendChild(chip);
      }
      box.appendChild(tags);
    } else {
      box.appendChild(el("div", "line1", it.lines[0]));
    }
    for (const line of it.lines.slice(1)) box.appendChild(el("div", "desc", line));
    TOKENS.forEach((e, n) => {
      if (!isCut(it, n) || !it.row.x || !it.row.x[e.key]) return;
      const cut = el("div", "cut");
      cut.title = tokenName(e) + " reads " + e.limit + " tokens; the rest of the longest line is never seen";
      cut.append(tokenName(e) + " cuts at " + e.limit + ": ");
      cut.appendChild(el("s", null, it.row.x[e.key]));
      box.appendChild(cut);
    });
    return box;
  }
  function cardFor(it) {
    const r = it.row;
    const card = el("div", "card");
    card.dataset.path = r.p;
    if (r.c == null) card.classList.add("missing");
    if (it.failed) card.classList.add("failed");
    if (selected.has(r.p)) card.classList.add("selected");
    const thumb = el("div", "thumb");
    if (r.t) {
      const link = el("a");
      link.href = url(DATA.image_base, r.p);
      link.target = "_blank";
      link.rel = "noopener";
      const img = el("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = r.p;
      img.src = DATA.thumb_base + r.t;
      link.appendChild(img);
      thumb.appendChild(link);
    } else {
      thumb.classList.add("broken");
      thumb.textContent = "cannot read: " + (failures.get(r.p) || "no thumbnail");
    }
    card.appendChild(thumb);
    const meta = el("div", "meta");
    if (editable) {
      const box = el("input");
      box.type = "checkbox";
      box.className = "pick";
      box.checked = selected.has(r.p);
      box.title = "select for tag edits";
      box.addEventListener("change", () => setSelected(r.p, box.checked));
      meta.appendChild(box);
    }
    const name = el("span", "file", r.p);
    name.title = r.p;
    meta.appendChild(name);
    if (r.c != null && it.lines.length) {
      const n = it.isTags ? it.tags.length : it.words;
      meta.appendChild(el("span", "badge", n + (it.isTags ? (n === 1 ? " tag" : " tags") : " words")));
    }
    if (r.w) meta.appendChild(el("span", "badge", r.w + "\u00d7" + r.h));
    TOKENS.forEach((e, n) => {
      if (r.stale && n === 0) {
        meta.appendChild(el("span", "badge tok-stale", "edited: tokens counted on reload"));
        return;
      }
      const c = tokenCount(it, n);
      if (c === null || (n > 0 && c <= e.limit)) return;  // the first encoder always, the others when over
      const b = el("span", "badge tok" + (c > e.limit ? " tok-over" : ""),
        (e.estimate ? "~" : "") + c + "/" + e.limit + " " + tokenName(e));
      b.dataset.encoder = e.key;
      b.title = tokenName(e) + " tokens of the longest line (" + e.label + ")";
      meta.appendChild(b);
    });
    card.appendChild(meta);
    if (it.failed && r.t) card.appendChild(el("div", "caption error", "failed: " + failures.get(r.p)));
    card.appendChild(captionBlock(it));
    if (editable) {
      const actions = el("div", "actions");
      const edit = el("button", "edit-btn", r.c == null ? "write caption" : "edit");
      edit.type = "button";
      edit.addEventListener("click", () => openEditor(it, card, true));
      actions.appendChild(edit);
      card.appendChild(actions);
      if (drafts.has(r.p)) openEditor(it, card, false);
    }
    return card;
  }
  function render() {
    readFilters();
    shown = items.filter(matches).sort(compare);
    $("grid").textContent = "";
    nodes.clear();
    rendered = 0;
    renderMore();
    $("shown-count").textContent = "showing " + fmt(shown.length) + " of " + fmt(items.length) + " images";
    $("empty").style.display = shown.length ? "none" : "block";
    markActiveTags();
  }
  function renderMore() {
    if (rendered >= shown.length) return;
    const frag = document.createDocumentFragment();
    const end = Math.min(shown.length, rendered + PAGE);
    for (; rendered < end; rendered++) {
      const it = shown[rendered];
      const card = cardFor(it);
      nodes.set(it.row.p, card);
      frag.appendChild(card);
    }
    $("grid").appendChild(frag);
    requestAnimationFrame(() => {
      if (rendered < shown.length && $("sentinel").getBoundingClientRect().top < window.innerHeight + 1500) renderMore();
    });
  }
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) renderMore();
  }, { rootMargin: "1500px 0px" }).observe($("sentinel"));

  /* ---------- the side panels ---------- */
  function tagCounts() {
    const counts = new Map();
    for (const it of items) {
      const seen = new Set();
      for (const t of it.tags) {
        const k = tagKey(t);
        if (seen.has(k)) continue;
        seen.add(k);
        const e = counts.get(k);
        if (e) e.n++; else counts.set(k, { name: t, n: 1 });
      }
    }
    return Array.from(counts.values()).sort((a, b) => b.n - a.n || collator.compare(a.name, b.name));
  }
  function barRow(label, n, max, onClick, key) {
    const tr = el("tr", "row");
    tr.dataset.key = key;
    tr.appendChild(el("td", "name", label));
    const bar = el("td", "bar");
    const span = el("span");
    span.style.width = Math.max(1, (100 * n) / max).toFixed(1) + "%";
    bar.appendChild(span);
    tr.appendChild(bar);
    tr.appendChild(el("td", "n", fmt(n)));
    tr.addEventListener("click", onClick);
    return tr;
  }
  function renderTags() {
    const all = tagCounts();
    const table = $("tag-table");
    table.textContent = "";
    const max = all.length ? all[0].n : 1;
    for (const e of showAllTags ? all : all.slice(0, TAGS_SHOWN))
      table.appendChild(barRow(e.name, e.n, max, () => toggleTagFilter(e.name), fkey(e.name)));
    $("tag-count").textContent = fmt(all.length) + " distinct";
    $("tags-more").style.display = all.length > TAGS_SHOWN ? "" : "none";
    $("tags-more").textContent = showAllTags ? "show top " + TAGS_SHOWN : "show all " + fmt(all.length);
    const list = $("tag-list");
    list.textContent = "";
    for (const e of all.slice(0, 500)) list.appendChild(el("option", null, e.name)).value = e.name;
    markActiveTags();
    return all.length;
  }
  function markActiveTags() {
    const active = new Set(state.include);
    for (const tr of $("tag-table").rows) tr.classList.toggle("active", active.has(tr.dataset.key));
    for (const tr of $("bucket-table").rows) tr.classList.toggle("active", Number(tr.dataset.key) === state.bucket);
    const chip = $("bucket-chip");
    chip.textContent = "";
    if (state.bucket >= 0) {
      const b = DATA.buckets[state.bucket];
      const c = el("span", "chip-filter", "bucket " + b[0] + "\u00d7" + b[1] + " \u2715");
      c.title = "show every bucket";
      c.addEventListener("click", () => { state.bucket = -1; render(); });
      chip.appendChild(c);
    }
  }
  function renderBuckets() {
    const counts = new Map();
    for (const it of items) if (it.row.b >= 0) counts.set(it.row.b, (counts.get(it.row.b) || 0) + 1);
    const rows = Array.from(counts.entries()).sort((a, b) => b[1] - a[1] || a[0] - b[0]);
    const table = $("bucket-table");
    table.textContent = "";
    const max = rows.length ? rows[0][1] : 1;
    for (const [b, n] of rows) {
      const [w, h] = DATA.buckets[b];
      table.appendChild(barRow(w + "\u00d7" + h, n, max, () => { state.bucket = state.bucket === b ? -1 : b; render(); }, String(b)));
    }
    $("bucket-count").textContent = rows.length + (rows.length === 1 ? " bucket" : " buckets");
    $("bucket-settings").textContent = DATA.settings;
  }
  function fileList(list, entries, reason) {
    list.textContent = "";
    for (const [p, why] of entries.slice(0, LIST_SHOWN)) {
      const li = el("li", null, p);
      if (reason) li.appendChild(el("span", "why", why));
      li.title = "show this image";
      li.addEventListener("click", () => { $("filter-text").value = p; $("filter-status").value = "all"; state.bucket = -1; render(); });
      list.appendChild(li);
    }
    if (entries.length > LIST_SHOWN) list.appendChild(el("li", null, "\u2026 and " + fmt(entries.length - LIST_SHOWN) + " more"));
  }
  function renderTokens() {
    const table = $("token-table");
    table.textContent = "";
    $("tokens-section").style.display = TOKENS.length ? "" : "none";
    if (!TOKENS.length) return 0;
    const counted = items.filter((it) => tokenCount(it, 0) !== null);
    let cutFirst = 0;
    TOKENS.forEach((e, n) => {
      for (const [limit, who] of e.limits) {
        const over = counted.filter((it) => tokenCount(it, n) > limit).length;
        if (n === 0 && limit === e.limit) cutFirst = over;
        const label = tokenName(e) + " over " + limit + " (" + who + ")";
        const tr = barRow(label, over, Math.max(1, counted.length), () => {
          if (limit !== e.limit) return;
          const v = "cut:" + n;
          $("filter-status").value = $("filter-status").value === v ? "all" : v;
          render();
        }, "tok-" + e.key + "-" + limit);
        if (limit !== e.limit) tr.classList.remove("row");
        table.appendChild(tr);
      }
    });
    $("token-count").textContent = fmt(cutFirst) + " cut by " + tokenName(TOKENS[0]);
    $("token-note").textContent = TOKENS.map((e) => tokenName(e) + ": " + e.label).join(" \u00b7 ") +
      ". Counts are of each caption's longest line; click a row at the trainer's limit to list those captions.";
    return cutFirst;
  }
  function addTokenFilters() {
    const select = $("filter-status");
    TOKENS.forEach((e, n) => {
      const o = el("option", null, "cut by " + tokenName(e) + " (over " + e.limit + ")");
      o.value = "cut:" + n;
      select.appendChild(o);
    });
  }

  function renderSide() {
    const missing = items.filter((it) => it.row.c == null).map((it) => [it.row.p, ""]);
    fileList($("missing-list"), missing, false);
    $("missing-count").textContent = fmt(missing.length);
    fileList($("failure-list"), DATA.failures, true);
    $("failure-count").textContent = fmt(DATA.failures.length);
    const distinct = renderTags();
    renderBuckets();
    const multi = items.filter((it) => it.lines.length > 1).length;
    const stats = $("stats");
    stats.textContent = "";
    const add = (n, what) => { const s = el("span"); s.appendChild(el("b", null, fmt(n))); s.append(" " + what); stats.appendChild(s); };
    add(items.length, "images");
    add(items.length - missing.length, "captioned");
    add(missing.length, "without a caption");
    add(DATA.failures.length, "failed");
    add(distinct, "distinct tags");
    const cut = renderTokens();
    if (TOKENS.length) add(cut, "cut by " + tokenName(TOKENS[0]) + " at " + TOKENS[0].limit + " tokens");
    if (multi) add(multi, "multi-line captions");
  }

  /* ---------- filters from clicks ---------- */
  function toggleTagFilter(tag) {
    const input = $("filter-tags");
    const terms = input.value.split(",").map((s) => s.trim()).filter(Boolean);
    const k = fkey(tag);
    const rest = terms.filter((t) => fkey(t) !== k);
    input.value = (rest.length === terms.length ? terms.concat([tag]) : rest).join(", ");
    render();
  }

  /* ---------- editing (served page only) ---------- */
  function status(text, ok) {
    const s = $("status-msg");
    s.textContent = text;
    s.className = ok ? "ok" : "error";
  }
  async function post(path, body) {
    const res = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Captionkit-Token": DATA.token },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    let payload = {};
    try { payload = await res.json(); } catch (e) { payload = { error: "HTTP " + res.status }; }
    if (!res.ok) throw new Error(payload.error || "HTTP " + res.status);
    return payload;
  }
  function applyUpdates(updated) {
    for (const [p, caption] of Object.entries(updated)) {
      const it = byPath.get(p);
      if (!it) continue;
      if (it.row.c !== caption && it.row.k) it.row.stale = true;  // counted by the page's writer: recount on reload
      it.row.c = caption;
      derive(it);
      const old = nodes.get(p);
      if (old) {
        const card = cardFor(it);
        old.replaceWith(card);
        nodes.set(p, card);
      }
    }
    renderSide();
  }
  function openEditor(it, card, focus) {
    if (card.querySelector("textarea")) return;
    const p = it.row.p;
    const draft = drafts.get(p);
    const base = draft ? draft.base : it.row.c;
    const area = el("textarea");
    area.value = draft ? draft.text : base || "";
    area.rows = Math.min(14, Math.max(4, Math.ceil(area.value.length / 34) + it.lines.length));
    const save = el("button", "save-btn", "save");
    const cancel = el("button", "cancel-btn", "cancel");
    save.type = cancel.type = "button";
    const block = card.querySelector(".caption:not(.error)");
    const actions = card.querySelector(".actions");
    block.replaceWith(area);
    actions.textContent = "";
    actions.append(save, cancel);
    if (focus) area.focus();
    area.addEventListener("input", () => drafts.set(p, { text: area.value, base: base }));
    const close = () => {
      drafts.delete(p);
      const fresh = cardFor(it);
      if (card.isConnected) card.replaceWith(fresh);
      if (nodes.get(p) === card) nodes.set(p, fresh);
    };
    const doSave = async () => {
      save.disabled = true;
      try {
        const res = await post("api/caption", { path: p, text: area.value, base: base });
        drafts.delete(p);
        applyUpdates(res.updated);
        status("saved " + p, true);
      } catch (e) {
        status("not saved: " + e.message, false);
        save.disabled = false;
      }
    };
    save.addEventListener("click", doSave);
    cancel.addEventListener("click", close);
    area.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); doSave(); }
      if (e.key === "Escape") close();
    });
  }
  function setSelected(p, on) {
    if (on) selected.add(p); else selected.delete(p);
    const card = nodes.get(p);
    if (card) {
      card.classList.toggle("selected", on);
      const box = card.querySelector("input.pick");
      if (box) box.checked = on;
    }
    $("selected-count").textContent = fmt(selected.size) + " selected";
  }
  async function tagOp(op) {
    const raw = $("tag-input").value;
    const tags = (sepCore && raw.includes(sepCore) ? raw.split(sepCore) : raw.split(",")).map((s) => s.trim()).filter(Boolean);
    if (!tags.length) { status("type the tags first", false); return; }
    if (!selected.size) { status("select images first (checkboxes, or \u201cselect shown\u201d)", false); return; }
    try {
      const res = await post("api/tags", { paths: Array.from(selected), op: op, tags: tags });
      applyUpdates(res.updated);
      const what = op === "add" ? "added " + tags.join(", ") + " to " : "removed " + tags.join(", ") + " from ";
      let msg = what + fmt(res.written) + (res.written === 1 ? " caption" : " captions");
      if (res.problems && res.problems.length) msg += "; not edited: " + res.problems.join("; ");
      status(msg, !(res.problems && res.problems.length));
    } catch (e) {
      status("not saved: " + e.message, false);
    }
  }

  /* ---------- wiring ---------- */
  if (editable) document.body.classList.add("editable");
  addTokenFilters();
  $("title").textContent = DATA.title;
  $("subtitle").textContent = DATA.root + "  \u00b7  captions: " + DATA.caption_extension +
    (DATA.caption_dir ? " in " + DATA.caption_dir : "") + "  \u00b7  " + (editable ? "live, edits are saved to disk" : "generated " + DATA.generated);
  let timer = null;
  const later = () => { clearTimeout(timer); timer = setTimeout(render, 150); };
  $("filter-text").addEventListener("input", later);
  $("filter-tags").addEventListener("input", later);
  $("filter-status").addEventListener("change", render);
  $("sort-key").addEventListener("change", render);
  $("sort-dir").addEventListener("click", () => {
    state.asc = !state.asc;
    $("sort-dir").textContent = state.asc ? "\u2191 ascending" : "\u2193 descending";
    render();
  });
  $("tags-more").addEventListener("click", () => { showAllTags = !showAllTags; renderTags(); });
  if (editable) {
    $("select-shown").addEventListener("click", () => { for (const it of shown) setSelected(it.row.p, true); });
    $("select-none").addEventListener("click", () => { for (const p of Array.from(selected)) setSelected(p, false); });
    $("tag-add").addEventListener("click", () => tagOp("add"));
    $("tag-remove").addEventListener("click", () => tagOp("remove"));
    window.addEventListener("beforeunload", (e) => {
      for (const d of drafts.values()) {
        if (d.text !== (d.base || "")) { e.preventDefault(); e.returnValue = ""; return; }
      }
    });
  }
  renderSide();
  render();
  document.body.dataset.ready = "1";
})();
