/* "Why this score?": word contributions and where CLIP looked (POST /api/explain/...).

   Any element with data-explain="<puzzle id>" gets a "Why?" button after each caption
   (.cap) inside it, now and when captions are added later (the play page adds attempts).
   The button shows the caption's words tinted by their effect (green helped, red hurt),
   each focusable, with its number on hover/focus and in the text for screen readers
   ("raccoon +0.0310"). Where data-heatmap is set (past days only; the server refuses
   running days anyway), a toggle draws the relevance map over the image whose id is in
   data-explain-img: the parts CLIP looked at stay bright, the rest is dimmed.

   A root with data-explain-target (and data-explain-room) asks about that picture instead of
   a puzzle: a room's reveal (room.js sets the finished round's target id on it; the server
   checks the room). Pages that build captions themselves may call
   CaptionaryExplain.decorate(root) and CaptionaryExplain.resetHeat(img) (a new picture). */
"use strict";
(function () {
  const API = "/api/explain/";

  function post(kind, body) {
    return fetch(API + kind, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    }).then(function (resp) {
      return resp.json().catch(function () { return { type: "error", message: "the server answered " + resp.status }; });
    }, function () { return { type: "error", message: "no connection; try again" }; });
  }

  // What a root's captions are about: its puzzle, or a picture (with the room that showed it).
  function about(root, caption) {
    const body = { caption: caption };
    if (root.dataset.explainTarget) {
      body.target = root.dataset.explainTarget;
      if (root.dataset.explainRoom) body.room = root.dataset.explainRoom;
    } else {
      body.puzzle = root.dataset.explain;
    }
    return body;
  }

  function fmt(effect) {
    return (effect >= 0 ? "+" : "−") + Math.abs(effect).toFixed(4);
  }

  function tint(effect, scale) {
    const a = scale > 0 ? Math.min(1, Math.abs(effect) / scale) * 0.55 : 0;
    return effect >= 0 ? "rgba(31, 160, 80, " + a.toFixed(3) + ")" : "rgba(210, 50, 40, " + a.toFixed(3) + ")";
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderWords(box, reply) {
    const effects = reply.words.map(function (w) { return w.effect === null ? 0 : Math.abs(w.effect); });
    const scale = Math.max.apply(null, effects.concat([1e-9]));
    const list = el("ul", "words");
    list.setAttribute("aria-label", "Each word's effect on the score " + reply.score.toFixed(4) +
                      " (the score without the word, subtracted from the full score)");
    reply.words.forEach(function (w) {
      const item = el("li", "word");
      item.tabIndex = 0;
      item.dataset.effect = w.effect === null ? "" : String(w.effect);
      item.appendChild(el("span", "w", w.word));
      const num = w.effect === null ? "the whole caption" : fmt(w.effect);
      item.appendChild(el("span", "sr-only", " " + num));
      const tip = el("span", "num", num);
      tip.setAttribute("aria-hidden", "true");
      item.appendChild(tip);
      if (w.effect !== null) item.style.backgroundColor = tint(w.effect, scale);
      item.title = w.word + " " + num;
      list.appendChild(item);
    });
    box.appendChild(list);
    const best = reply.words.filter(function (w) { return w.effect !== null; })
      .sort(function (a, b) { return b.effect - a.effect; })[0];
    box.appendChild(el("p", "words-note", best
      ? "Green words raised the score, red ones lowered it. Most help: \u201c" + best.word + "\u201d " + fmt(best.effect) + "."
      : "A one-word caption has nothing to compare with."));
  }

  function contentBox(img) {
    // The image as drawn (object-fit: contain), then CLIP's centre square crop of it.
    const bw = img.clientWidth, bh = img.clientHeight, nw = img.naturalWidth || bw, nh = img.naturalHeight || bh;
    const s = Math.min(bw / nw, bh / nh), w = nw * s, h = nh * s;
    const side = Math.min(w, h);
    return { x: (bw - w) / 2 + (w - side) / 2, y: (bh - h) / 2 + (h - side) / 2, side: side, bw: bw, bh: bh };
  }

  function overlayFor(img) {
    let wrap = img.parentElement;
    if (!wrap.classList.contains("heat-wrap")) {
      wrap = el("span", "heat-wrap");
      img.parentElement.insertBefore(wrap, img);
      wrap.appendChild(img);
      const canvas = el("canvas", "heat");
      canvas.setAttribute("aria-hidden", "true");
      canvas.hidden = true;
      wrap.appendChild(canvas);
    }
    return wrap.querySelector("canvas.heat");
  }

  function drawHeat(img, reply) {
    const canvas = overlayFor(img);
    const box = contentBox(img);
    canvas.width = Math.round(box.bw);
    canvas.height = Math.round(box.bh);
    const small = document.createElement("canvas");
    small.width = reply.cols;
    small.height = reply.rows;
    const sctx = small.getContext("2d");
    reply.grid.forEach(function (row, r) {
      row.forEach(function (v, c) {
        sctx.fillStyle = "rgba(10, 10, 30, " + (0.78 * (1 - v)).toFixed(3) + ")";
        sctx.fillRect(c, r, 1, 1);
      });
    });
    const ctx = canvas.getContext("2d");
    // CLIP sees only the centre square (resize, then crop): the rest was not looked at at all.
    ctx.fillStyle = "rgba(10, 10, 30, 0.78)";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.clearRect(box.x, box.y, box.side, box.side);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(small, box.x, box.y, box.side, box.side);
    canvas.hidden = false;
  }

  function hideHeat(img) {
    const canvas = overlayFor(img);
    canvas.hidden = true;
  }

  // A page whose picture changes under its captions (a room's next round): overlay off, toggles up.
  function resetHeat(img) {
    if (img) hideHeat(img);
    document.querySelectorAll(".heat-toggle[aria-pressed=true]").forEach(function (button) {
      button.setAttribute("aria-pressed", "false");
      const note = button.parentElement.querySelector(".heat-note");
      if (note) note.textContent = "";
    });
  }

  function explain(root, button, caption) {
    const open = button.getAttribute("aria-expanded") === "true";
    const box = document.getElementById(button.getAttribute("aria-controls"));
    if (open) {
      button.setAttribute("aria-expanded", "false");
      box.hidden = true;
      return;
    }
    button.setAttribute("aria-expanded", "true");
    box.hidden = false;
    if (box.dataset.loaded) return;
    const status = el("p", "explain-status", "Asking the judge…");
    status.setAttribute("role", "status");
    box.replaceChildren(status);
    post("words", about(root, caption)).then(function (reply) {
      if (reply.type !== "words") {
        status.textContent = reply.message || "That did not work; try again.";
        status.classList.add("error");
        return;
      }
      box.dataset.loaded = "1";
      status.textContent = "";
      renderWords(box, reply);
      if (root.dataset.heatmap) box.appendChild(heatToggle(root, caption));
    });
  }

  function heatToggle(root, caption) {
    const img = document.getElementById(root.dataset.explainImg);
    const button = el("button", "btn heat-toggle", "Where CLIP looked");
    button.type = "button";
    button.setAttribute("aria-pressed", "false");
    const note = el("span", "heat-note");
    note.setAttribute("role", "status");
    const wrap = el("p", "heat-controls");
    wrap.appendChild(button);
    wrap.appendChild(note);
    let reply = null;
    button.addEventListener("click", function () {
      if (!img) return;
      if (button.getAttribute("aria-pressed") === "true") {
        button.setAttribute("aria-pressed", "false");
        hideHeat(img);
        note.textContent = "";
        return;
      }
      document.querySelectorAll(".heat-toggle[aria-pressed=true]").forEach(function (other) {
        if (other !== button) other.click();   // one overlay per picture
      });
      const show = function () {
        drawHeat(img, reply);
        button.setAttribute("aria-pressed", "true");
        note.textContent = "Bright parts of the picture mattered most for this caption; dimmed parts least.";
      };
      if (reply) { show(); return; }
      note.textContent = "Working it out…";
      post("heatmap", about(root, caption)).then(function (r) {
        if (r.type !== "heatmap") { note.textContent = r.message || "That did not work; try again."; return; }
        reply = r;
        show();
      });
    });
    return wrap;
  }

  let counter = 0;
  function decorate(root) {
    root.querySelectorAll(".cap").forEach(function (cap) {
      if (cap.dataset.why) return;
      cap.dataset.why = "1";
      const caption = cap.textContent.trim();
      if (!caption) return;
      counter += 1;
      const button = el("button", "why", "Why?");
      button.type = "button";
      button.setAttribute("aria-expanded", "false");
      button.setAttribute("aria-label", "Why did \u201c" + caption.slice(0, 60) + "\u201d score that?");
      const box = el("div", "explain-box");
      box.id = "explain-" + counter;
      box.hidden = true;
      button.setAttribute("aria-controls", box.id);
      button.addEventListener("click", function () { explain(root, button, caption); });
      cap.insertAdjacentElement("afterend", box);
      cap.insertAdjacentElement("afterend", button);
    });
  }

  function watch(root) {
    if (root.dataset.explainWatched) return;
    root.dataset.explainWatched = "1";
    decorate(root);
    new MutationObserver(function () { decorate(root); }).observe(root, { childList: true, subtree: true });
  }

  window.CaptionaryExplain = { decorate: watch, resetHeat: resetHeat };
  document.querySelectorAll("[data-explain]").forEach(watch);
})();
