// The console websocket of one port, as a link that repairs itself.
//
// Tracks `next`, the offset of the next output byte this page has not seen (hello.offset plus the
// bytes received since, moved on by a `gap`). When the link drops it reconnects with backoff and
// asks for `from=next`, so whatever the target printed meanwhile is replayed, not lost.
// Exposed as window.SB.ConsoleLink.
(function () {
  "use strict";

  const INITIAL_HISTORY = 64 * 1024; // the first connection shows the last 64 KiB of output
  const PIECE = 16 * 1024; // a long paste goes out in binary frames of at most this size
  const HIGH_WATER = 64 * 1024; // ...while the browser holds less than this unsent
  const PING_EVERY = 15000;
  const DEAD_AFTER = 40000; // no message at all for this long: the link is dead, reconnect

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  class ConsoleLink {
    constructor(port, handlers) {
      this.port = port;
      this.handlers = handlers; // {state, hello, data, gap, status, result, error, event, ended}
      this.ws = null;
      this.next = null;
      this.wantWrite = false;
      this.takeoverNext = false;
      this.state = "idle";
      this.attempt = 0;
      this.hold = false; // test hook: do not reconnect while true
      this.stopped = false;
      this.lastHello = null;
      this.lastSeen = 0;
      this.timer = null;
      this.pinger = setInterval(() => this.ping(), PING_EVERY);
      window.addEventListener("online", () => {
        if (this.state === "reconnecting") this.connect();
      });
    }

    url() {
      const query = new URLSearchParams({ mode: this.wantWrite ? "rw" : "ro" });
      query.set("from", String(this.next === null ? -INITIAL_HISTORY : this.next));
      if (this.takeoverNext) query.set("takeover", "1");
      return `wss://${location.host}/api/ports/${encodeURIComponent(this.port)}/console?${query}`;
    }

    setState(state, detail) {
      this.state = state;
      this.handlers.state(state, detail);
    }

    connect() {
      clearTimeout(this.timer);
      this.timer = null;
      if (this.stopped || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
      this.setState(this.attempt === 0 && this.next === null ? "connecting" : "reconnecting");
      const ws = new WebSocket(this.url());
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.lastSeen = Date.now();
      let opened = false;
      ws.addEventListener("open", () => {
        opened = true;
      });
      ws.addEventListener("message", (event) => this.onMessage(ws, event));
      ws.addEventListener("close", (event) => this.onClose(ws, event, opened));
    }

    onMessage(ws, event) {
      if (ws !== this.ws) return;
      this.lastSeen = Date.now();
      if (typeof event.data !== "string") {
        const bytes = new Uint8Array(event.data);
        if (this.next !== null) this.next += bytes.length;
        this.handlers.data(bytes);
        return;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      switch (message.type) {
        case "hello":
          this.next = message.offset;
          this.lastHello = message;
          this.attempt = 0;
          this.takeoverNext = false;
          this.setState("connected");
          this.handlers.hello(message);
          break;
        case "gap":
          this.next = message.to;
          this.handlers.gap(message);
          break;
        case "status":
        case "result":
        case "error":
        case "event":
          this.handlers[message.type](message);
          break;
        default:
          break; // pong and anything newer
      }
    }

    onClose(ws, event, opened = true) {
      if (ws !== this.ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (event.code === 1008) {
        this.stopped = true;
        this.setState("closed", event.reason || "session ended");
        this.handlers.ended(event.reason || "session ended");
        return;
      }
      this.attempt += 1;
      this.setState("reconnecting", event.reason);
      if (!opened) this.handlers.refused(); // the upgrade failed: the page asks the bridge why
      else if (this.attempt % 4 === 0) this.handlers.ended(null); // let the page check the session
      if (this.hold) return;
      const delay = Math.min(250 * 2 ** (this.attempt - 1), 8000);
      this.timer = setTimeout(() => this.connect(), delay);
    }

    // Give up for good (the bridge refuses this console); `reason` goes to the page.
    stop(reason) {
      this.stopped = true;
      clearTimeout(this.timer);
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.close();
      this.setState("closed", reason);
    }

    // Close the current socket (as if the network dropped it); reconnects unless `hold`.
    drop() {
      if (this.ws) this.ws.close(4000, "dropped");
    }

    resume() {
      this.hold = false;
      if (!this.ws) this.connect();
    }

    ping() {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      if (Date.now() - this.lastSeen > DEAD_AFTER) {
        this.onClose(ws, { code: 4001, reason: "no answer from the bridge" });
        ws.close();
        return;
      }
      ws.send(JSON.stringify({ type: "ping" }));
    }

    isOpen() {
      return !!this.ws && this.ws.readyState === WebSocket.OPEN && this.state === "connected";
    }

    send(bytes) {
      if (!this.isOpen()) return false;
      this.ws.send(bytes);
      return true;
    }

    control(message) {
      if (!this.isOpen()) return false;
      this.ws.send(JSON.stringify(message));
      return true;
    }

    // Send a long input in pieces without piling it up in the browser; resolves with the number
    // of bytes handed to the socket (less than bytes.length if the link dropped meanwhile).
    async sendPaced(bytes, progress) {
      const ws = this.ws;
      let sent = 0;
      while (sent < bytes.length) {
        if (ws !== this.ws || ws.readyState !== WebSocket.OPEN) break;
        if (ws.bufferedAmount > HIGH_WATER) {
          await sleep(20);
          continue;
        }
        const piece = bytes.subarray(sent, sent + PIECE);
        ws.send(piece);
        sent += piece.length;
        if (progress) progress(sent, bytes.length);
      }
      return sent;
    }
  }

  window.SB.ConsoleLink = ConsoleLink;
})();
