/* Live leaderboard page: subscribes to the day's puzzles and re-renders on each push;
   without a websocket it polls the HTTP board endpoint. */
"use strict";
(function () {
  const root = document.getElementById("boards");
  if (!root || root.dataset.live !== "true") return;
  const puzzles = root.dataset.puzzles.split(" ").filter(Boolean);
  const me = document.body.dataset.player;

  const daily = root.querySelector("[data-daily]");
  let dailyTimer = null;

  function refreshDaily() {
    // A puzzle's board changed, so the day's sums did too: one fetch per burst of pushes.
    clearTimeout(dailyTimer);
    dailyTimer = setTimeout(function () {
      live.get("daily?date=" + encodeURIComponent(daily.dataset.daily)).then(function (msg) {
        if (msg.type !== "daily") return;
        CaptionaryLive.renderBoard(daily, msg.entries, me, false);
        root.querySelector("[data-daily-empty]").hidden = msg.entries.length > 0;
      }, function () {});
    }, 300);
  }

  function show(msg) {
    if (msg.type !== "board") return;
    if (daily) refreshDaily();
    const list = root.querySelector('[data-board="' + CSS.escape(msg.puzzle) + '"]');
    if (!list) return;
    CaptionaryLive.renderBoard(list, msg.entries, me, !msg.captions_hidden);
    const empty = root.querySelector('[data-board-empty="' + CSS.escape(msg.puzzle) + '"]');
    if (empty) empty.hidden = msg.entries.length > 0;
  }

  const live = new CaptionaryLive.Live({
    wsPath: root.dataset.ws,
    apiBase: root.dataset.api,
    onMessage: show,
    onOpen: function () { live.send({ type: "subscribe", puzzles: puzzles }); },
  });
  setInterval(function () {
    if (live.mode === "ws") return;
    puzzles.forEach(function (p) { live.get("board?puzzle=" + encodeURIComponent(p)).then(show, function () {}); });
  }, 10000);
})();
