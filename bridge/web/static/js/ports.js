// The ports overview: GET /api/ports, refreshed every 5 seconds.
(function () {
  "use strict";
  const { api, $, el, showMe } = window.SB;

  function row(port) {
    const link = el("a", { href: `/ports/${encodeURIComponent(port.name)}`, text: port.name });
    const state = el("span", {
      class: `pill ${port.enabled === false ? "warn" : port.online ? "ok" : "bad"}`,
      text: port.enabled === false ? "disabled" : port.online ? "online" : "offline",
    });
    const power = port.power && port.power !== "unknown" ? port.power : "";
    const watching = String(port.viewers);
    return el(
      "tr",
      { "data-port": port.name },
      el("th", { scope: "row" }, link),
      el("td", { text: port.description || "" }),
      el("td", {}, state),
      el("td", { class: "power", text: power }),
      el("td", { class: "writer", text: port.writer || "—" }),
      el("td", { class: "viewers", text: watching })
    );
  }

  async function refresh() {
    try {
      const ports = await api("/api/ports");
      $("ports-body").replaceChildren(...ports.map(row));
      $("ports-empty").hidden = ports.length > 0;
      $("ports-error").hidden = true;
    } catch (err) {
      if (err.status === 401) return;
      $("ports-error").textContent = `Cannot list the ports: ${err.message}`;
      $("ports-error").hidden = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    showMe($("me"));
    refresh();
    setInterval(refresh, 5000);
  });
})();
