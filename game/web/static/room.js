/* A Play-with-friends room: joins (or resumes) over /ws, sends drafts as you type (debounced),
   renders the room snapshots the server pushes (seats, live bars, reveal, podium) and runs the
   countdown from the server's deadline and clock (the browser's clock only measures the gap).
   Other players' text arrives only in reveals and is always rendered with textContent. */
"use strict";
(function () {
  const root = document.getElementById("room");
  if (!root) return;
  const code = root.dataset.room;
  const me = document.body.dataset.player;
  const $ = function (id) { return document.getElementById(id); };
  const caption = $("caption"), scoreEl = $("score"), message = $("message"), lockBtn = $("lock-btn");
  // The play page's measured typing pause (play.js PAUSE_MS, docs/scaling.md): half the
  // drafts of 150 ms for a bar that still moves within about a third of a second.
  const BAR_FULL = 0.5, DEBOUNCE_MS = 250;

  let joined = false, state = null, offset = 0, seq = 0, shownSeq = -1, debounce = null, lastSent = null;
  let lockedRound = 0, announceTimer = null, said = {};

  function say(text, isError) {
    message.textContent = text || "";
    message.className = "message" + (isError ? " error" : "");
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function isHost() { return state && state.host === me; }
  function mySeat() { return state && state.players.find(function (p) { return p.player === me; }); }

  function setScore(value) {
    scoreEl.textContent = value === null ? "–" : value.toFixed(4);
    clearTimeout(announceTimer);
    if (value !== null) {
      announceTimer = setTimeout(function () { $("score-announce").textContent = "Your score " + value.toFixed(4); }, 1000);
    }
  }

  function renderSeats() {
    const list = $("seats");
    while (list.firstChild) list.removeChild(list.firstChild);
    state.players.forEach(function (p) {
      const li = el("li", "seat" + (p.player === me ? " you" : "") + (p.online ? "" : " offline"));
      li.dataset.player = p.player;
      const name = el("span", "nm", p.nickname);
      li.append(name);
      if (p.player === state.host) li.append(" ", el("span", "tag", "host"));
      if (p.role === "spectator") li.append(" ", el("span", "tag", "watching"));
      else if (!p.playing && state.phase === "round") li.append(" ", el("span", "tag", "next round"));
      if (!p.online) li.append(" ", el("span", "tag", "offline"));
      if (p.locked) li.append(" ", el("span", "tag locked", "locked in"));
      const bar = el("div", "bar"); bar.setAttribute("aria-hidden", "true");
      const fill = el("div", "bar-fill"); fill.dataset.bar = p.player;
      const value = state.bars && state.bars[p.player];
      fill.style.width = value === undefined ? "0%" : barWidth(value);
      bar.append(fill);
      li.append(bar, el("span", "sc", String(p.total)));
      if (isHost() && p.player !== me) {
        const host = el("button", "btn small", "Make host"); host.type = "button";
        host.setAttribute("aria-label", "Make " + p.nickname + " the host");
        host.addEventListener("click", function () { live.send({ type: "room_host", room: code, player: p.player }); });
        const kick = el("button", "btn small", "Remove"); kick.type = "button";
        kick.setAttribute("aria-label", "Remove " + p.nickname + " from the room");
        kick.addEventListener("click", function () { live.send({ type: "room_kick", room: code, player: p.player }); });
        li.append(host, kick);
      }
      list.append(li);
    });
  }

  function barWidth(value) { return Math.max(0, Math.min(100, value / BAR_FULL * 100)).toFixed(1) + "%"; }

  function renderBars(bars) {
    Object.keys(bars).forEach(function (player) {
      const fill = root.querySelector('[data-bar="' + CSS.escape(player) + '"]');
      if (fill) fill.style.width = barWidth(bars[player]);
    });
  }

  // The reveal is rebuilt only when it changes (a snapshot also comes for every seat going on- or
  // offline), so an open "Why?" (explain.js) stays open while the room lives on.
  let shownResult = null;
  function renderResult(result) {
    const box = $("reveal");
    box.hidden = !result;
    const key = result ? JSON.stringify([state.game, result]) : null;
    if (key === shownResult) return;
    shownResult = key;
    if (window.CaptionaryExplain) CaptionaryExplain.resetHeat($("picture"));
    if (!result) { delete box.dataset.explainTarget; return; }
    // The target id arrives with the reveal only: the captions' "Why?" asks the server about it.
    if (result.target) box.dataset.explainTarget = result.target;
    else delete box.dataset.explainTarget;
    $("reveal-round").textContent = result.round + (result.skipped ? " (skipped by the host: no points)" : "");
    const list = $("reveal-list");
    while (list.firstChild) list.removeChild(list.firstChild);
    result.entries.forEach(function (e) {
      const li = el("li", e.player === me ? "you" : "");
      li.append(el("span", "rk", String(e.rank)), " ", el("span", "nm", e.nickname), " ",
                el("span", "sc", e.score.toFixed(4)), " ", el("span", "pts", "+" + e.points));
      li.append(el("q", "cap", e.caption));
      list.append(li);
    });
    if (!result.entries.length) list.append(el("li", "empty", "Nobody wrote a caption this round."));
    const machine = $("machine");
    machine.hidden = result.kind !== "gan" || !result.prompt;
    if (!machine.hidden) {
      machine.textContent = "The machine drew this from \u201c" + result.prompt + "\u201d" +
        (result.machine_score !== null ? ", which scores " + result.machine_score.toFixed(4) : "") + ".";
    }
  }

  function renderPodium() {
    const box = $("podium");
    box.hidden = state.phase !== "over";
    if (box.hidden) return;
    const list = $("podium-list");
    while (list.firstChild) list.removeChild(list.firstChild);
    state.podium.forEach(function (p) {
      const li = el("li", p.player === me ? "you" : "");
      li.append(el("span", "rk", String(p.rank)), " ", el("span", "nm", p.nickname), " ", el("span", "sc", p.total + " points"));
      list.append(li);
    });
  }

  function render(next) {
    const newRound = !state || next.round !== state.round || next.game !== state.game;
    state = next;
    offset = state.now - Date.now();
    const phase = { lobby: "Waiting for the host to start", round: "Round " + state.round + " of " + state.rounds,
                    reveal: "Round " + state.round + " revealed", over: "Game over" }[state.phase];
    $("phase").textContent = phase;
    $("stage").hidden = state.phase === "lobby";
    $("room-form").hidden = state.phase !== "round";  // between rounds the reveal comes first
    $("invite").hidden = state.phase !== "lobby";
    if (state.picture && $("picture").getAttribute("src") !== state.picture) $("picture").src = state.picture;
    const seat = mySeat();
    const playing = joined && seat && seat.playing && state.phase === "round" && lockedRound !== state.round;
    caption.disabled = lockBtn.disabled = !playing;
    if (newRound && state.phase === "round") {
      caption.value = ""; lastSent = null; setScore(null); say(""); said = {};
      if (playing) caption.focus();
    }
    if (joined && !seat) say("You are no longer in this room (the host removed you).", true);
    renderSeats();
    renderResult(state.phase === "reveal" || state.phase === "over" ? state.result : null);
    renderPodium();
    $("host-box").hidden = !isHost();
    $("start-btn").hidden = state.phase !== "lobby";
    $("next-btn").hidden = state.phase !== "reveal";
    $("skip-btn").hidden = state.phase !== "round";
    $("again-btn").hidden = state.phase !== "over";
    $("leave-btn").hidden = !joined || !seat;
    tick();
  }

  function tick() {
    const out = $("countdown");
    if (!state || state.phase !== "round") { out.textContent = "–"; return; }
    const left = Math.max(0, Math.ceil((state.ends_at - (Date.now() + offset)) / 1000));
    out.textContent = left + " s";
    // Screen readers hear the time at a few moments, not every second.
    [30, 10, 5, 0].forEach(function (mark) {
      if (left <= mark && !said[mark]) {
        said[mark] = true;
        $("countdown-say").textContent = mark === 0 ? "Time is up" : left + " seconds left";
      }
    });
  }
  setInterval(tick, 250);

  function sendDraft() {
    clearTimeout(debounce);
    const text = caption.value;
    if (text === lastSent || !state || state.phase !== "round") return;
    lastSent = text;
    if (!text.trim()) { setScore(null); return; }
    seq += 1;
    live.send({ type: "room_draft", seq: seq, room: code, round: state.round, caption: text });
  }

  caption.addEventListener("input", function () {
    clearTimeout(debounce);
    debounce = setTimeout(sendDraft, DEBOUNCE_MS);
  });
  caption.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); lockIn(); }
  });
  $("room-form").addEventListener("submit", function (ev) { ev.preventDefault(); lockIn(); });

  function lockIn() {
    if (!caption.value.trim()) { say("Write a caption first.", true); caption.focus(); return; }
    live.send({ type: "room_lock", room: code, round: state.round, caption: caption.value });
  }

  $("join-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    live.send({ type: "room_join", room: code, nickname: $("join-nickname").value });
  });
  $("start-btn").addEventListener("click", function () { live.send({ type: "room_start", room: code }); });
  $("next-btn").addEventListener("click", function () { live.send({ type: "room_next", room: code }); });
  $("skip-btn").addEventListener("click", function () { live.send({ type: "room_skip", room: code, round: state.round }); });
  $("again-btn").addEventListener("click", function () { live.send({ type: "room_again", room: code }); });
  $("leave-btn").addEventListener("click", function () {
    live.send({ type: "room_leave", room: code });
    joined = false;
    root.dataset.member = "false";
    $("join-box").hidden = false;
  });

  function onMessage(msg) {
    switch (msg.type) {
      case "room_joined":
        joined = true;
        root.dataset.member = "true";
        $("join-box").hidden = true;
        if (msg.you.draft && msg.you.draft.locked) lockedRound = state ? state.round : lockedRound;
        if (msg.you.draft) { caption.value = msg.you.draft.caption; lastSent = caption.value; setScore(msg.you.draft.score); }
        if (state) render(state);
        break;
      case "room":
        if (msg.room === code) render(msg);
        break;
      case "room_bars":
        if (state && msg.room === code && msg.round === state.round) { state.bars = msg.bars; renderBars(msg.bars); }
        break;
      case "room_score":
        if (msg.seq < shownSeq) return;
        shownSeq = msg.seq;
        setScore(msg.score);
        if (message.classList.contains("error")) say("");
        break;
      case "room_locked":
        lockedRound = msg.round;
        caption.disabled = lockBtn.disabled = true;
        setScore(msg.score);
        say("Locked in with " + msg.score.toFixed(4) + ".");
        break;
      case "error":
        say(msg.message, true);
        if (!joined && (msg.code === "bad_nickname" || msg.code === "nickname_taken" || msg.code === "nickname_needed")) {
          $("join-box").hidden = false;
          $("join-nickname").focus();
        }
        break;
    }
  }

  // HTTP fallback: while the websocket cannot connect, follow the room by polling its snapshot
  // (countdown, seats, reveal, podium); typing and lock-ins need the live connection back.
  const POLL_MS = 2000;
  let poller = null;
  function pollState() {
    fetch(root.dataset.stateUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (msg) {
        if (msg.type === "room" && msg.room === code) render(msg);
        else if (msg.type === "error") say(msg.message, true);
      })
      .catch(function () {});
  }
  function following(on) {
    if (on && !poller) {
      pollState();
      poller = setInterval(pollState, POLL_MS);
      say("No live connection: following the room every few seconds; typing comes back with the connection.");
    } else if (!on && poller) {
      clearInterval(poller);
      poller = null;
      say("");
    }
  }

  const live = new CaptionaryLive.Live({
    wsPath: root.dataset.ws,
    apiBase: "/api",
    onMessage: onMessage,
    onStatus: function (s) {
      $("conn").textContent = { live: "live", reconnecting: "reconnecting…", "offline-http": "reconnecting…" }[s] || s;
      $("conn").dataset.state = s;
      if (s === "offline-http") following(true);
      else if (s === "live") following(false);
    },
    onOpen: function () {
      // A member (this page, or an earlier one) resumes the seat: the room lives on the server.
      if (joined || root.dataset.member === "true") live.send({ type: "room_join", room: code });
    },
  });
})();
