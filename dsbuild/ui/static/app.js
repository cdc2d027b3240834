// dsbuild ui — the app's one script (served from /static; the CSP allows no inline script).
// Data comes from the page's data-* attributes and from JSON answers; it is shown with
// textContent only, never parsed as HTML.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const banner = document.getElementById("banner");
  const toastBox = document.getElementById("toast");
  let toastTimer = null;

  function toast(text) {
    toastBox.textContent = text;
    toastBox.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { toastBox.hidden = true; }, 6000);
  }

  function showBanner(text) {
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const retry = document.body.dataset.retry;
  if (retry) setTimeout(() => location.reload(), Number(retry));

  // The queue and "more like this" hold the same review cards, decided with the same keys.
  if (document.body.dataset.page === "queue" || document.body.dataset.page === "similar") reviewQueue();
  if (document.body.dataset.page === "predict") predictPage();

  // ------------------------------------------------------------------ the review queue

  function reviewQueue() {
    const cards = Array.from(document.querySelectorAll("#cards .card"));
    const byId = new Map(cards.map((c) => [c.dataset.id, c]));
    const keys = {};
    document.querySelectorAll("#keymap li[data-key]").forEach((li) => { keys[li.dataset.key] = li.dataset.label; });
    const focusImg = document.getElementById("focus-img");
    const focusText = document.getElementById("focus-text");
    const help = document.getElementById("help");
    const mode = document.getElementById("mode");
    const selected = new Set();
    // Groups of decisions made together, newest last: {ids, events} where events maps an image id to the event
    // the app got back for it (filled when the answer comes; a decision that changed nothing has none and is
    // dropped). An undo names those events, so it never reverts a decision someone else made since.
    const undoStack = [];
    const outbox = []; // requests not yet answered, oldest first: {decisions, group} or {undoOf}
    let sending = false;
    let grid = false;
    let anchor = -1;
    let idx = cards.findIndex((c) => !c.classList.contains("decided"));
    if (idx < 0) idx = 0;

    function isDone(c) { return c.classList.contains("decided") || c.classList.contains("pending"); }

    function focus(i) {
      if (!cards.length) return;
      idx = Math.max(0, Math.min(cards.length - 1, i));
      cards.forEach((c) => c.classList.remove("focused"));
      const c = cards[idx];
      c.classList.add("focused");
      c.scrollIntoView({ block: "nearest" });
      focusImg.src = "/image/" + encodeURIComponent(c.dataset.id);
      showFocusText(c);
    }

    // The large preview's words: the card's label now (after a decision or an undo, not the page's first one).
    // A decided card: its decision, not the suggestion (which then reads as an open one).
    function showFocusText(c) {
      const decided = c.classList.contains("decided");
      const sug = !decided && c.dataset.suggested && c.dataset.suggested !== c.dataset.label ? " → " + c.dataset.suggested : "";
      const state = decided ? " · " + c.querySelector("[data-role=state]").textContent : "";
      focusText.textContent = c.dataset.label + sug + state + " · " + c.dataset.kind + " · " + c.dataset.id;
    }

    function nextOpen(from) {
      for (let i = from + 1; i < cards.length; i++) if (!isDone(cards[i])) return i;
      return Math.min(from + 1, cards.length - 1);
    }

    function select(c, on) {
      if (on) selected.add(c.dataset.id); else selected.delete(c.dataset.id);
      c.classList.toggle("selected", on);
    }

    function clearSelection() { cards.forEach((c) => select(c, false)); }

    function setGrid(on) {
      grid = on;
      document.body.classList.toggle("grid-mode", on);
      mode.textContent = on ? "grid mode: click / Space / Shift+click / a (all on this page) select; a decision key applies to the selection; g: back"
        : "single mode";
      if (!on) clearSelection();
    }

    function targets() {
      if (grid && selected.size) return cards.filter((c) => selected.has(c.dataset.id));
      return cards.length ? [cards[idx]] : [];
    }

    function decisionFor(c, action, label) {
      const id = c.dataset.id;
      if (action === "accept") {
        const s = c.dataset.suggested;
        return s && s !== c.dataset.label ? { image_id: id, action: "relabel", new_label: s } : null;
      }
      if (action === "relabel") {
        // The current label's key keeps it: the server records the keep, noted as a file's relabel row to its own
        // label is (same_label_keep), and says so. A grid selection leaves its cards of that label as they are.
        if (label === c.dataset.label && grid && selected.size) return null;
        return { image_id: id, action: "relabel", new_label: label };
      }
      return { image_id: id, action: action };
    }

    function act(action, label) {
      const list = targets().map((c) => decisionFor(c, action, label)).filter(Boolean);
      if (!list.length) {
        const why = action === "accept" && targets().map((c) => c.dataset.why).find(Boolean);
        toast(why ? "no suggestion to accept: " + why : action === "accept" ? "no suggestion to accept for this image" : "nothing to change");
        return;
      }
      const group = { ids: list.map((d) => d.image_id), events: null };
      undoStack.push(group);
      // Enter on a selection takes the model's suggestions in bulk: the server skips cards a person decided.
      send(list, group, action === "accept" && grid && selected.size > 0);
      if (grid && selected.size) clearSelection();
      else focus(nextOpen(idx));
    }

    function undo() {
      const group = undoStack.pop();
      if (!group) { toast("nothing to undo in this session"); return; }
      group.ids.forEach((id) => { const c = byId.get(id); if (c) c.classList.add("pending"); });
      outbox.push({ undoOf: group });
      pump();
      const i = cards.findIndex((c) => c.dataset.id === group.ids[0]);
      if (i >= 0) focus(i);
    }

    // The decisions of an outbox item; an undo's are made when it is sent (after the answer to what it undoes).
    function itemDecisions(item) {
      if (!item.undoOf) return item.decisions;
      const events = item.undoOf.events || {};
      return item.undoOf.ids.filter((id) => events[id] != null)
        .map((id) => ({ image_id: id, action: "undo", event_id: events[id] }));
    }

    function itemIds(item) { return item.undoOf ? item.undoOf.ids : item.decisions.map((d) => d.image_id); }

    function waiting() { return outbox.reduce((n, item) => n + itemIds(item).length, 0); }

    function send(decisions, group, bulk) {
      decisions.forEach((d) => { const c = byId.get(d.image_id); if (c) c.classList.add("pending"); });
      outbox.push({ decisions: decisions, group: group, bulk: !!bulk });
      pump();
    }

    function unpend(item) { itemIds(item).forEach((id) => { const c = byId.get(id); if (c) c.classList.remove("pending"); }); }

    function dropGroup(group) {
      const at = undoStack.indexOf(group);
      if (at >= 0) undoStack.splice(at, 1);
    }

    function applyState(s) {
      const c = byId.get(s.image_id);
      if (!c) return;
      c.dataset.label = s.label;
      c.querySelector(".given").textContent = s.label;
      c.querySelector("[data-role=state]").textContent = s.state;
      c.classList.toggle("decided", s.decided);
      c.classList.toggle("agrees", s.label === c.dataset.suggested);
      c.dataset.status = s.status;
      if (cards[idx] === c) showFocusText(c);
    }

    async function pump() {
      if (sending || !outbox.length) return;
      const item = outbox[0];
      const decisions = itemDecisions(item);
      if (!decisions.length) { // an undo of decisions that changed nothing: nothing to send
        outbox.shift();
        unpend(item);
        toast("nothing to undo: that decision changed nothing");
        pump();
        return;
      }
      sending = true;
      let res = null;
      let body = {};
      try {
        res = await fetch("/api/decide", {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
          body: JSON.stringify(item.bulk && !item.undoOf ? { decisions: decisions, bulk_accept: true } : { decisions: decisions }),
        });
        body = await res.json().catch(() => ({}));
      } catch (err) {
        res = null;
      }
      sending = false;
      if (res && res.ok) {
        outbox.shift();
        unpend(item);
        (body.states || []).forEach(applyState);
        const said = (body.skipped ? [body.skipped_why] : []).concat(body.notes || []); // one toast: a second hides the first
        if (said.length) toast(said.join("; "));
        if (item.group) {
          const events = {};
          (body.states || []).forEach((s) => { if (s.event_id != null) events[s.image_id] = s.event_id; });
          item.group.events = events;
          item.group.ids = item.group.ids.filter((id) => events[id] != null);
          if (!item.group.ids.length) dropGroup(item.group); // changed nothing: not on the undo stack
        }
        if (!outbox.length) showBanner("");
        pump();
        return;
      }
      if (!res || res.status === 503) {
        const why = res ? "Catalog busy: " + (body.error || "another process writes it") : "The app does not answer";
        showBanner(why + " — " + waiting() + " decision(s) waiting, retrying every 2 s (keep this page open)");
        setTimeout(pump, 2000);
        return;
      }
      outbox.shift();
      unpend(item);
      if (item.group) dropGroup(item.group);
      toast("not applied: " + (body.error || "HTTP " + res.status));
      if (!outbox.length) showBanner("");
      pump();
    }

    window.addEventListener("beforeunload", (e) => {
      if (outbox.length) { e.preventDefault(); e.returnValue = ""; }
    });

    cards.forEach((c, i) => {
      c.addEventListener("click", (e) => {
        if (e.target.closest("a")) return;
        if (grid) {
          if (e.shiftKey && anchor >= 0) {
            const [a, b] = anchor < i ? [anchor, i] : [i, anchor];
            for (let j = a; j <= b; j++) select(cards[j], true);
          } else {
            select(c, !selected.has(c.dataset.id));
            anchor = i;
          }
        }
        focus(i);
      });
    });

    function follow(id) { const a = document.getElementById(id); if (a) location.href = a.href; }

    document.addEventListener("keydown", (e) => {
      if (e.target.closest && e.target.closest("input, select, textarea")) return;
      if (e.altKey || e.metaKey) return;
      const k = e.key;
      if (e.ctrlKey) {
        if (k === "z" || k === "Z") { e.preventDefault(); undo(); }
        return;
      }
      if (k === "?") { help.hidden = !help.hidden; return; }
      if (k === "Escape") { help.hidden = true; clearSelection(); return; }
      if (k === "j" || k === "ArrowRight" || k === "ArrowDown") { e.preventDefault(); focus(idx + 1); return; }
      if (k === "ArrowLeft" || k === "ArrowUp") { e.preventDefault(); focus(idx - 1); return; }
      if (k === "g") { setGrid(!grid); return; }
      if (k === "n") { follow("next-page"); return; }
      if (k === "p") { follow("prev-page"); return; }
      if (grid && k === " ") { e.preventDefault(); if (cards[idx]) { select(cards[idx], !selected.has(cards[idx].dataset.id)); anchor = idx; } return; }
      if (grid && k === "a") { cards.forEach((c) => select(c, true)); return; }
      if (!cards.length) return;
      if (k === "Enter") { e.preventDefault(); act("accept"); return; }
      if (k === "x") { act("remove"); return; }
      if (k === "k") { act("keep"); return; }
      if (k === "u") { undo(); return; }
      // More like this: s, or Shift+S when s is a class key (the 19th class on); the page's own image is here.
      if (k === "S" || (k === "s" && !Object.prototype.hasOwnProperty.call(keys, "s"))) {
        const more = cards[idx].querySelector("a.more");
        if (more) location.href = more.href;
        return;
      }
      if (Object.prototype.hasOwnProperty.call(keys, k)) { act("relabel", keys[k]); }
    });

    focus(idx);
  }

  // ------------------------------------------------------------------ predict

  function predictPage() {
    const drop = document.getElementById("drop");
    if (!drop) return;
    const input = document.getElementById("files");
    const results = document.getElementById("results");

    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      sendAll(Array.from(e.dataTransfer.files));
    });
    input.addEventListener("change", () => {
      const files = Array.from(input.files);
      input.value = "";
      sendAll(files);
    });

    const limit = Number(drop.dataset.limit);
    const BATCH = 20; // files per request (the app takes at most 20): one model run predicts them all

    async function sendAll(files) {
      const boxes = files.map((f) => {
        const box = el("div", "result");
        box.dataset.file = f.name;
        box.append(el("div", "name", f.name));
        results.prepend(box);
        return box;
      });
      const todo = [];
      files.forEach((f, i) => {
        if (limit && f.size > limit) {
          refuse(boxes[i], f.name + " is over the upload limit of " + limit.toLocaleString("en-US") +
                 " bytes (the dataset's verify.max_bytes) — use a smaller image");
        } else {
          todo.push(i);
        }
      });
      for (let k = 0; k < todo.length; k += BATCH) {
        const batch = todo.slice(k, k + BATCH);
        const form = new FormData();
        for (const i of batch) form.append("file", files[i], files[i].name);
        let res = null;
        let body = {};
        try {
          res = await fetch("/api/predict", {
            method: "POST", credentials: "same-origin", body: form, headers: { "X-CSRF-Token": csrf },
          });
          body = await res.json().catch(() => ({}));
        } catch (err) {
          body = { error: "the app does not answer" };
        }
        if (!res || !res.ok || !Array.isArray(body.results)) {
          for (const i of batch) refuse(boxes[i], body.error || "HTTP " + (res ? res.status : "?"));
          continue;
        }
        batch.forEach((i, j) => show(boxes[i], files[i], body.results[j] || { error: "no answer for this file" }));
      }
    }

    function refuse(box, message) {
      box.classList.add("refused");
      box.append(el("p", "error", message));
    }

    function show(box, f, result) {
      if (result.error) {
        refuse(box, result.error);
        return;
      }
      const img = el("img");
      img.alt = f.name;
      img.src = URL.createObjectURL(f);
      box.append(img);
      const table = el("table", "top");
      for (const t of result.top) {
        const tr = el("tr");
        tr.append(el("td", "label", t.label));
        tr.append(el("td", "p", (100 * t.probability).toFixed(1) + "%"));
        const meter = el("meter");
        meter.min = 0; meter.max = 1; meter.value = t.probability;
        const td = el("td");
        td.append(meter);
        tr.append(td);
        table.append(tr);
      }
      box.append(table);
      box.classList.add("done");
    }
  }
})();
