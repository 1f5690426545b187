/* Captionary's live connection: a websocket with reconnect + backoff, and the same
   actions over HTTP JSON when websockets are blocked. No user data ever goes
   through innerHTML: callers render with textContent. */
"use strict";

window.CaptionaryLive = (function () {
  const HTTP_ACTIONS = { draft: "draft", submit: "submit", hint: "hint", hello: "state" };

  function Live(opts) {
    this.wsPath = opts.wsPath;          // "/ws"
    this.apiBase = opts.apiBase;        // "/api"
    this.onMessage = opts.onMessage;    // (msg) => void, for every server message
    this.onStatus = opts.onStatus || function () {};
    this.onOpen = opts.onOpen || function () {};
    this.ws = null;
    this.failures = 0;
    this.mode = "connecting";           // "ws" | "http" | "connecting"
    this.timer = null;
    this.connect();
  }

  Live.prototype.connect = function () {
    const self = this;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    let ws;
    try {
      ws = new WebSocket(scheme + location.host + this.wsPath);
    } catch (e) {
      this.failures += 1;   // blocked outright (policy, proxy, old browser)
      this.retry();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = function () {
      opened = true;
      self.failures = 0;
      self.mode = "ws";
      self.onStatus("live");
      self.onOpen();
    };
    ws.onmessage = function (ev) {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      self.onMessage(msg);
    };
    ws.onclose = function () {
      self.ws = null;
      if (!opened) self.failures += 1;
      self.retry();
    };
  };

  Live.prototype.retry = function () {
    // After a few failed handshakes, keep playing over HTTP while retrying in the background.
    this.mode = this.failures >= 2 ? "http" : "connecting";
    this.onStatus(this.mode === "http" ? "offline-http" : "reconnecting");
    const base = Math.min(30000, 500 * Math.pow(2, Math.min(this.failures, 6)));
    const delay = base / 2 + Math.random() * base / 2;   // jitter: a restart does not get a thundering herd
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  };

  Live.prototype.send = function (msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(msg));
      return;
    }
    const path = HTTP_ACTIONS[msg.type];
    if (!path) return;  // subscriptions only make sense live; pages poll instead
    this.http(path, msg);
  };

  Live.prototype.http = function (path, body) {
    const self = this;
    return fetch(this.apiBase + "/" + path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body),
    }).then(function (r) { return r.json(); })
      .then(function (msg) { self.onMessage(msg); })
      .catch(function () {
        self.onMessage({ type: "error", code: "network", message: "could not reach the server; check your connection" });
      });
  };

  Live.prototype.get = function (path) {
    return fetch(this.apiBase + "/" + path, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.json(); });
  };

  function renderBoard(list, entries, me, showCaptions) {
    // Built node by node with textContent: nicknames and captions are other players' text.
    while (list.firstChild) list.removeChild(list.firstChild);
    entries.forEach(function (e) {
      const li = document.createElement("li");
      if (e.player === me) li.className = "you";
      const rk = document.createElement("span"); rk.className = "rk"; rk.textContent = e.rank;
      const nm = document.createElement("span"); nm.className = "nm"; nm.textContent = e.nickname;
      const sc = document.createElement("span"); sc.className = "sc"; sc.textContent = Number(e.score).toFixed(4);
      li.append(rk, " ", nm, " ", sc);
      if (e.hint) {
        const h = document.createElement("span"); h.className = "hint-mark"; h.title = "used the hint";
        const sr = document.createElement("span"); sr.className = "sr-only"; sr.textContent = " used the hint";
        h.append("💡", sr);
        li.append(" ", h);
      }
      if (showCaptions && e.caption !== undefined) {
        const q = document.createElement("q"); q.className = "cap"; q.textContent = e.caption;
        li.append(" ", q);
      }
      list.appendChild(li);
    });
  }

  return { Live: Live, renderBoard: renderBoard };
})();
