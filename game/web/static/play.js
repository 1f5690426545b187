/* The play page: live score while typing (a draft once typing pauses for PAUSE_MS,
   and at once at word boundaries), submit, hint, and the puzzle's live leaderboard.
   Scores arrive tagged with the draft's seq; an answer older than the newest one
   shown is ignored. */
"use strict";
(function () {
  const root = document.getElementById("play");
  if (!root) return;
  const puzzle = root.dataset.puzzle;
  const ranked = root.dataset.ranked === "true";
  const me = document.body.dataset.player;
  const $ = function (id) { return document.getElementById(id); };
  const caption = $("caption"), scoreEl = $("score"), bar = $("score-bar"), announce = $("score-announce");
  const message = $("message"), conn = $("conn"), submitBtn = $("submit-btn"), hintBtn = $("hint-btn");
  const maxChars = Number(document.body.dataset.maxChars) || 200;

  let seq = 0, shownSeq = -1, debounce = null, announceTimer = null, lastSent = null, pendingSubmit = false;
  // Typing pause before a mid-word draft. Each draft costs the server a share of
  // an encoder pass, and at 150 ms most keystrokes of a steady typist sent one
  // (half-typed words, overtaken by the next key). Tuned with bench/ws_load.py
  // --pause-ms (docs/scaling.md): 150 ms offered 3.45 drafts/s per typist, 250 ms
  // 1.62, 300 ms 0.63 (words only). 250 ms keeps a score within ~1/3 s of a pause.
  // bench/ws_load.py reads this line.
  const PAUSE_MS = 250;
  const BAR_FULL = 0.5;   // cosine scores rarely pass 0.5: the bar is full there

  function setScore(value) {
    if (value === null) {
      scoreEl.textContent = "–";
      bar.style.width = "0%";
      return;
    }
    scoreEl.textContent = value.toFixed(4);
    bar.style.width = Math.max(0, Math.min(100, value / BAR_FULL * 100)).toFixed(1) + "%";
    clearTimeout(announceTimer);
    // Screen readers hear the score once typing pauses, not on every keystroke.
    announceTimer = setTimeout(function () { announce.textContent = "Score " + value.toFixed(4); }, 1000);
  }

  function say(text, isError) {
    message.textContent = text || "";
    message.className = "message" + (isError ? " error" : "");
  }

  function sendDraft() {
    clearTimeout(debounce);
    const text = caption.value;
    if (text === lastSent) return;
    lastSent = text;
    if (!text.trim()) { setScore(null); return; }
    seq += 1;
    live.send({ type: "draft", seq: seq, puzzle: puzzle, caption: text });
  }

  caption.addEventListener("input", function (ev) {
    $("char-count").textContent = caption.value.length + "/" + maxChars;
    clearTimeout(debounce);
    const last = caption.value.slice(-1);
    if (ev.inputType === "insertText" && /[\s.,;:!?]/.test(last)) {
      sendDraft();   // a word just ended: score it now
    } else {
      debounce = setTimeout(sendDraft, PAUSE_MS);
    }
  });
  caption.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); doSubmit(); }
  });
  $("caption-form").addEventListener("submit", function (ev) { ev.preventDefault(); doSubmit(); });

  function doSubmit() {
    const text = caption.value;
    if (!text.trim()) { say("Write a caption first.", true); caption.focus(); return; }
    if (pendingSubmit) return;
    pendingSubmit = true;
    submitBtn.disabled = true;
    say("Submitting…");
    live.send({ type: "submit", puzzle: puzzle, caption: text });
  }

  hintBtn.addEventListener("click", function () {
    live.send({ type: "hint", puzzle: puzzle });
  });

  function addAttempt(text, score) {
    const li = document.createElement("li");
    const cap = document.createElement("span"); cap.className = "cap"; cap.textContent = text;
    const sc = document.createElement("span"); sc.className = "sc"; sc.textContent = score.toFixed(4);
    li.append(cap, " ", sc);
    const list = $("attempts");
    list.insertBefore(li, list.firstChild);
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "score":
        if (msg.puzzle !== puzzle || msg.seq < shownSeq) return;
        shownSeq = msg.seq;
        setScore(msg.score);
        if (message.classList.contains("error")) say("");
        break;
      case "dropped":
        break;   // a newer draft overtook it; its score is on the way
      case "result":
        pendingSubmit = false;
        submitBtn.disabled = false;
        setScore(msg.score);
        addAttempt(msg.caption, msg.score);
        if (msg.practice) {
          say("Practice score " + msg.score.toFixed(4) + " (past days do not change their boards).");
          break;
        }
        $("best").textContent = msg.best.toFixed(4);
        $("rank").textContent = msg.rank;
        if ($("left")) $("left").textContent = msg.submissions_left;
        say((msg.improved ? "New best! " : "Submitted. ") + "Score " + msg.score.toFixed(4) + ", rank " + msg.rank +
            ", " + msg.submissions_left + " submission" + (msg.submissions_left === 1 ? "" : "s") + " left.");
        if (msg.submissions_left === 0) submitBtn.disabled = true;
        break;
      case "hint":
        $("hint-word-inline").textContent = msg.word;
        $("hint-used").hidden = false;
        hintBtn.textContent = "Hint: " + msg.word;
        hintBtn.disabled = true;
        break;
      case "board":
        if (msg.puzzle !== puzzle) return;
        CaptionaryLive.renderBoard($("board"), msg.entries, me, !msg.captions_hidden);
        $("board-empty").hidden = msg.entries.length > 0;
        break;
      case "error":
        if (msg.code === "over_cap" || msg.code === "slow_down" || pendingSubmit) {
          pendingSubmit = false;
          submitBtn.disabled = msg.code === "over_cap";
        }
        say(msg.message, true);
        break;
    }
  }

  const live = new CaptionaryLive.Live({
    wsPath: root.dataset.ws,
    apiBase: root.dataset.api,
    onMessage: onMessage,
    onStatus: function (s) {
      conn.textContent = { live: "live", reconnecting: "reconnecting…", "offline-http": "live updates paused (using HTTP)" }[s] || s;
      conn.dataset.state = s;
    },
    onOpen: function () {
      live.send({ type: "subscribe", puzzles: [puzzle] });
      lastSent = null;
      if (caption.value.trim()) sendDraft();   // re-score what is in the box after a reconnect
    },
  });
  // Without a websocket the board is polled over HTTP.
  setInterval(function () {
    if (live.mode === "ws") return;
    live.get("board?puzzle=" + encodeURIComponent(puzzle)).then(onMessage, function () {});
  }, 10000);
})();
