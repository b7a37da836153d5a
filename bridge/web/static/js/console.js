// The console page: an xterm.js terminal on one port's websocket, with a status bar, copy/paste,
// long-paste confirmation, "send terminal size", screen-reader mode and keyboard navigation.
// window.serialBridge is a small hook for tests and the curious: {term, link, paste(text)}.
(function () {
  "use strict";
  const { api, $, whoami, confirmDialog, toLogin } = window.SB;

  const PASTE_CONFIRM = 2048;
  const THEME = {
    background: "#0d1117",
    foreground: "#d6dde6",
    cursor: "#7ee0a1",
    cursorAccent: "#0d1117",
    selectionBackground: "#2f4a6b",
    black: "#1b2029",
    red: "#f0736a",
    green: "#7ee0a1",
    yellow: "#e7c46a",
    blue: "#6cb6ff",
    magenta: "#d2a8ff",
    cyan: "#5fd7d7",
    white: "#c9d1d9",
    brightBlack: "#6e7681",
    brightRed: "#ff9c94",
    brightGreen: "#a5f0bf",
    brightYellow: "#f5d98b",
    brightBlue: "#9ccfff",
    brightMagenta: "#e2c5ff",
    brightCyan: "#8ee8e8",
    brightWhite: "#f0f6fc",
  };

  const body = document.body;
  const port = body.dataset.port;
  const encoder = new TextEncoder();
  const view = { me: null, role: "viewer", mode: "ro", writer: null, viewers: [], online: null, power: null };
  let term = null;
  let fit = null;
  let link = null;
  let sentSize = "";

  function notify(text, kind = "info") {
    const box = $("notice");
    box.textContent = text;
    box.className = `notice ${kind}`;
    box.title = text;
  }

  function isWriter() {
    return view.mode === "rw";
  }

  function canType() {
    return link && link.isOpen() && isWriter();
  }

  function focusTerminal() {
    if (term) term.focus();
  }

  function toolbarControls() {
    return [...document.querySelectorAll("#toolbar button, #toolbar a[href], #toolbar input")].filter(
      (node) => node.offsetParent !== null && !node.disabled
    );
  }

  // ---- status bar -----------------------------------------------------------------------------

  function setPill(node, text, kind) {
    node.textContent = text;
    node.className = `pill ${kind || ""}`;
  }

  function render() {
    const state = link ? link.state : "connecting";
    const linkText = { connecting: "connecting…", connected: "connected", reconnecting: "reconnecting…", closed: "disconnected" }[state] || state;
    setPill($("st-link"), linkText, state === "connected" ? "ok" : state === "closed" ? "bad" : "warn");
    if (view.online === null) setPill($("st-port"), "", "");
    else setPill($("st-port"), view.online ? "target online" : "target offline", view.online ? "ok" : "bad");
    $("st-port").hidden = view.online === null;
    setPill($("st-mode"), isWriter() ? "writer" : "read-only", isWriter() ? "accent" : "");
    $("st-writer").textContent = view.writer ? `writer: ${view.writer}${view.writer === view.me && !isWriter() ? " (another tab)" : ""}` : "writer: nobody";
    const names = [...new Set(view.viewers)];
    $("st-viewers").textContent = `watching: ${view.viewers.length}${names.length ? ` (${names.join(", ")})` : ""}`;
    if (term) term.options.disableStdin = !canType();
    const takeover = $("btn-takeover");
    const release = $("btn-release");
    if (takeover && release) {
      takeover.hidden = isWriter();
      release.hidden = !isWriter();
    }
  }

  function applyStatus(message, first) {
    const wasWriter = isWriter();
    if (message.mode) view.mode = message.mode;
    if ("writer" in message) view.writer = message.writer;
    if (Array.isArray(message.viewers)) view.viewers = message.viewers;
    if ("online" in message) view.online = message.online;
    if ("playbook" in message) window.SB.showPlaybook(message.playbook);
    render();
    if (first) return;
    const actor = message.actor;
    switch (message.event) {
      case "takeover":
        if (wasWriter && !isWriter()) notify(`${actor} took over ${port}: you are read-only now. Use “Take over” to type again.`, "warn");
        else if (isWriter()) notify(`You are the writer on ${port}.`, "ok");
        else notify(`${actor} is now the writer on ${port}.`);
        break;
      case "lease":
        if (isWriter()) notify(`You are the writer on ${port}.`, "ok");
        break;
      case "release":
        if (!isWriter()) notify(actor === view.me && wasWriter ? `You released ${port}; you are read-only.` : `${actor} released ${port}; nobody is writing.`);
        break;
      case "idle-release":
        if (wasWriter) notify(`Your write lease on ${port} ended after a time without typing; you are read-only.`, "warn");
        break;
      case "offline":
        notify(`The target's console is offline${message.reason ? `: ${message.reason}` : ""}. Output resumes when it is back.`, "error");
        break;
      case "online":
        notify(`The target's console is back online.`, "ok");
        break;
      case "closed":
        notify(`The bridge closed ${port}: ${message.reason || "closed"}.`, "error");
        break;
      default:
        break;
    }
    if (!wasWriter && isWriter()) sendSize(true);
  }

  // A marker the bridge recorded (an alert, an action, a boot...): alerts are shown at once.
  function onEvent(message) {
    if (message.event === "alert") {
      const kind = message.severity === "info" ? "ok" : message.severity === "warning" ? "warn" : "error";
      const boot = message.boot_seconds !== undefined ? ` (boot took ${message.boot_seconds} s)` : "";
      notify(`Alert on ${port}: ${message.rule} (${message.severity})${boot}: ${message.line}`, kind);
    }
    if (message.event === "playbook" && message.result && message.result !== "started") {
      const kind = message.result === "ok" ? "ok" : "warn";
      notify(`Playbook ${message.playbook} on ${port}: ${message.result}${message.result === "ok" ? "" : ` at step ${message.step}`}.`, kind);
    }
    if (window.SB.timeline) window.SB.timeline.add(message);
  }

  // ---- input ----------------------------------------------------------------------------------

  function refuseTyping() {
    if (!link || !link.isOpen()) notify("Not connected: keystrokes are not sent.", "warn");
    else if (view.role === "viewer") notify("Your role may only watch this port.", "warn");
    else notify(`Read-only: ${view.writer ? `${view.writer} is writing` : "nobody is writing"}. Use “Take over” to type.`, "warn");
  }

  function type(text) {
    if (!canType()) return refuseTyping();
    link.send(encoder.encode(text));
  }

  // Pasted text stays text: an ESC in it could end bracketed paste early ("ESC[201~"), and what
  // follows it would run as typed commands, or it could type escape sequences into the target's
  // programs. ESC and the 8-bit CSI are removed (clipboard content may come from any web page).
  const PASTE_ESCAPES = /[\x1b\x9b]/g;

  async function paste(raw) {
    if (!raw) return;
    if (!canType()) return refuseTyping();
    const text = raw.replace(PASTE_ESCAPES, "");
    const removed = raw.length - text.length;
    if (removed) notify(`Removed ${removed} escape character${removed === 1 ? "" : "s"} from the pasted text.`);
    if (!text) return;
    let data = text.replace(/\r?\n/g, "\r");
    if (term.modes.bracketedPasteMode) data = `\x1b[200~${data}\x1b[201~`;
    if (text.length > PASTE_CONFIRM) {
      const lines = text.split(/\r?\n/).length;
      const ok = await confirmDialog({
        title: `Paste ${text.length.toLocaleString("en")} characters into ${port}?`,
        text: `That is ${lines} line${lines === 1 ? "" : "s"}. The whole text is sent, as fast as the serial line takes it; the target receives it as if typed.`,
        ok: "Paste all",
        danger: false,
      });
      focusTerminal();
      if (!ok) return;
    }
    const bytes = encoder.encode(data);
    const sent = await link.sendPaced(bytes, (done, all) => {
      if (all > PASTE_CONFIRM) notify(`Pasting… ${Math.floor((100 * done) / all)}%`);
    });
    if (sent < bytes.length) notify(`Paste interrupted: the link dropped after ${sent} of ${bytes.length} bytes.`, "error");
    else if (bytes.length > PASTE_CONFIRM) notify(`Pasted ${text.length.toLocaleString("en")} characters.`, "ok");
  }

  async function copySelection() {
    const text = term.getSelection();
    if (!text) return notify("Nothing selected to copy.");
    try {
      await navigator.clipboard.writeText(text);
      notify(`Copied ${text.length} characters.`, "ok");
    } catch (err) {
      notify(`Copy failed: ${err.message}`, "error");
    }
  }

  function sendSize(force) {
    const option = $("opt-size");
    if (!option || !option.checked || !canType() || !term) return;
    const size = `${term.rows}x${term.cols}`;
    if (!force && size === sentSize) return;
    sentSize = size;
    type(`stty rows ${term.rows} cols ${term.cols}\r`);
  }

  function onKeyDown(event) {
    // capture phase on the document: before xterm.js sees the key
    const inTerminal = $("terminal").contains(document.activeElement);
    if (event.ctrlKey && event.key === "F6") {
      event.preventDefault();
      event.stopPropagation();
      if (inTerminal) {
        const controls = toolbarControls();
        if (controls.length) controls[0].focus();
      } else {
        focusTerminal();
      }
      return;
    }
    if (inTerminal && !canType() && !event.ctrlKey && !event.metaKey && !event.altKey) {
      if (event.key.length === 1 || event.key === "Enter") refuseTyping(); // say why nothing happens
      return;
    }
    if (!inTerminal || !event.ctrlKey || !event.shiftKey || event.altKey) return;
    if (event.code === "KeyC") {
      event.preventDefault();
      event.stopPropagation();
      copySelection();
    } else if (event.code === "KeyV") {
      event.stopPropagation(); // xterm.js must not send ^V; the browser then fires "paste"
    }
  }

  function onPaste(event) {
    event.preventDefault();
    event.stopPropagation();
    paste(event.clipboardData ? event.clipboardData.getData("text/plain") : "");
  }

  // ---- start ----------------------------------------------------------------------------------

  function vendorPresent() {
    return body.dataset.vendor === "ok" && typeof window.Terminal === "function" && window.FitAddon && typeof window.FitAddon.FitAddon === "function";
  }

  let fitTimer = null;
  function scheduleFit() {
    clearTimeout(fitTimer);
    fitTimer = setTimeout(() => {
      fit.fit();
      clearTimeout(sizeTimer);
      sizeTimer = setTimeout(() => sendSize(false), 600);
    }, 50);
  }
  let sizeTimer = null;

  async function start() {
    if (!vendorPresent()) {
      $("vendor-missing").hidden = false;
      setPill($("st-link"), "terminal unavailable", "bad");
      return;
    }
    let me;
    let ports;
    try {
      me = await whoami();
      ports = await api("/api/ports");
    } catch (err) {
      if (err.status !== 401) notify(`Cannot load the page: ${err.message}`, "error");
      return;
    }
    const info = ports.find((p) => p.name === port) || { lines: [], description: "" };
    view.me = me.user;
    view.role = me.role;
    view.power = info.power;
    $("me").textContent = `${me.user} (${me.role})`;
    $("port-desc").textContent = info.description || "";

    const screenReader = localStorage.getItem("sb.screenReader") === "1";
    $("opt-sr").checked = screenReader;
    $("opt-size").checked = localStorage.getItem("sb.sendSize") === "1";
    term = new window.Terminal({
      cursorBlink: true,
      fontFamily: '"DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace',
      fontSize: 14,
      lineHeight: 1.1,
      scrollback: 20000,
      disableStdin: true,
      screenReaderMode: screenReader,
      theme: THEME,
    });
    fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open($("terminal"));
    term.textarea?.setAttribute("aria-label", `Serial console of ${port}`);
    fit.fit();
    new ResizeObserver(scheduleFit).observe($("terminal-wrap"));

    term.onData(type);
    term.onBinary((data) => {
      if (!canType()) return refuseTyping();
      link.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff));
    });
    document.addEventListener("keydown", onKeyDown, true);
    $("terminal").addEventListener("paste", onPaste, true);
    $("opt-sr").addEventListener("change", () => {
      term.options.screenReaderMode = $("opt-sr").checked;
      localStorage.setItem("sb.screenReader", $("opt-sr").checked ? "1" : "0");
    });
    $("opt-size").addEventListener("change", () => {
      localStorage.setItem("sb.sendSize", $("opt-size").checked ? "1" : "0");
      sendSize(true);
    });

    link = new window.SB.ConsoleLink(port, {
      state: (state, detail) => {
        render();
        if (state === "reconnecting") notify(`Connection lost${detail ? ` (${detail})` : ""}; reconnecting…`, "warn");
      },
      hello: (message) => {
        applyStatus(message, true);
        if (link.attempt === 0 && $("notice").textContent.startsWith("Connection lost")) notify("Reconnected; the output resumed where it stopped.", "ok");
        if (isWriter()) sendSize(true);
      },
      data: (bytes) => term.write(bytes),
      gap: (message) => {
        term.write(`\r\n\x1b[2m[serial-bridge: output missing here: offsets ${message.from}..${message.to} are not held]\x1b[0m\r\n`);
      },
      status: (message) => applyStatus(message, false),
      result: (message) => notify(`${message.action} done on ${port}.`, "ok"),
      event: (message) => onEvent(message),
      error: (message) => notify(message.message, "error"),
      refused: async () => {
        try {
          await api(`/api/ports/${encodeURIComponent(port)}/access`);
        } catch (err) {
          if (err.status === 403 || err.status === 404 || err.status === 503) {
            link.stop(err.message);
            notify(`The bridge refuses this console: ${err.message}.`, "error");
          }
        }
      },
      ended: async (reason) => {
        if (window.SB.isLeaving()) return;
        try {
          await whoami(true);
          if (reason) notify(`The bridge ended this console: ${reason}.`, "error");
        } catch (_) {
          toLogin();
        }
      },
    });
    link.wantWrite = me.role !== "viewer";
    window.SB.setupActions({
      port,
      role: me.role,
      lines: new Set(info.lines || []),
      link,
      notify,
      focusTerminal,
      isWriter,
      writer: () => view.writer,
      power: () => view.power,
    });
    window.SB.setupRescue({ port, role: me.role, notify, focusTerminal });
    window.SB.timeline.load();
    window.serialBridge = { term, link, paste, view };
    link.connect();
    focusTerminal();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
