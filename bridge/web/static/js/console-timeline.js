// The console page's timeline: a strip of the events the port's history holds — boots, alerts,
// offline/online, BREAK/SysRq/NMI/reset/power and who did them, playbooks — read from
// /api/ports/NAME/log?format=jsonl&events=1 and extended live by the websocket's `event`
// messages. Each event is a link that opens the log (readable text) at its offset. Keyboard: one
// Tab stop; Left/Right (and Home/End) move between events, Enter opens one.
// Exposed as window.SB.timeline {load(), add(event)}.
(function () {
  "use strict";
  const { $, el } = window.SB;
  const LIMIT = 200; // events shown (the newest)
  const HIDDEN = new Set(["playbook-step", "gap", "attach", "detach"]);
  const port = document.body.dataset.port;
  const seen = new Set();

  function clock(time) {
    const when = typeof time === "number" ? new Date(time * 1000) : new Date(time);
    return Number.isNaN(when.getTime()) ? "" : when.toLocaleTimeString("en-GB");
  }

  function label(e) {
    const who = e.user ? ` by ${e.user}` : "";
    switch (e.event) {
      case "alert":
        return e.boot_seconds !== undefined ? `booted (${e.boot_seconds} s)` : `alert ${e.rule}`;
      case "sysrq":
        return `SysRq ${e.keys || ""}${who}`;
      case "power":
        return `power ${e.action || ""}${who}`;
      case "playbook":
        return `playbook ${e.playbook} ${e.result}${who}`;
      case "break":
        return `BREAK${who}`;
      case "nmi":
        return `NMI${who}`;
      default:
        return `${e.event}${who}`;
    }
  }

  function kind(e) {
    if (e.event === "alert") return e.boot_seconds !== undefined || e.severity === "info" ? "ev-boot" : "ev-alert";
    if (e.event === "offline" || e.event === "unclean-stop") return "ev-offline";
    return "";
  }

  function add(e) {
    if (!e || !e.event || HIDDEN.has(e.event)) return;
    const at = e.at !== undefined ? e.at : e.offset;
    const key = `${e.event}|${at}|${e.rule || ""}|${e.user || ""}|${e.result || ""}`;
    if (seen.has(key)) return;
    seen.add(key);
    const list = $("timeline-list");
    const text = `${clock(e.time)} ${label(e)}`;
    const detail = e.event === "alert" ? `: ${e.line}` : e.reason ? `: ${e.reason}` : "";
    const link = el("a", {
      href: `/api/ports/${encodeURIComponent(port)}/log?format=text&strip=1&from=${at}`,
      target: "_blank",
      rel: "noopener",
      class: kind(e),
      tabindex: "-1",
      title: `${text}${detail} (offset ${at})`,
      "data-offset": String(at),
      text,
    });
    list.append(el("li", {}, link));
    while (list.children.length > LIMIT) list.firstElementChild.remove();
    $("timeline").hidden = false;
    if (!list.contains(document.activeElement)) {
      // not while someone moves along the strip: the newest becomes its Tab stop, in view
      for (const a of list.querySelectorAll("a")) a.tabIndex = -1;
      link.tabIndex = 0;
      list.scrollLeft = list.scrollWidth;
    }
  }

  function move(event) {
    const links = [...$("timeline-list").querySelectorAll("a")];
    const at = links.indexOf(document.activeElement);
    if (at < 0) return;
    const to = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: links.length - 1 }[event.key];
    if (to === undefined || to < 0 || to >= links.length) return;
    event.preventDefault();
    links[at].tabIndex = -1;
    links[to].tabIndex = 0;
    links[to].focus();
  }

  async function load() {
    try {
      const response = await fetch(`/api/ports/${encodeURIComponent(port)}/log?format=jsonl&events=1`, {
        credentials: "same-origin",
      });
      if (!response.ok) return;
      for (const line of (await response.text()).split("\n")) {
        if (line) add(JSON.parse(line));
      }
    } catch (_) {
      /* the strip stays as it is */
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("timeline-list").addEventListener("keydown", move);
  });
  window.SB.timeline = { load, add };
})();
