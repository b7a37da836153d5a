// The console page's command bar: Take over / Release, the SysRq menu, BREAK, NMI, Reset, Power and
// the log links. Buttons the user's role (or the port's lines) cannot use are not shown; every
// destructive action asks first, naming the port. Exposed as window.SB.setupActions(ctx).
(function () {
  "use strict";
  const { api, $, el, confirmDialog } = window.SB;

  const POWER_TEXT = {
    on: "Press the power button briefly to switch the target on.",
    off: "Press the power button briefly: the target's OS is asked to shut down.",
    "force-off": "Hold the power button: the target is switched off at once, unsaved data is lost.",
    cycle: "Force the target off, then switch it on again.",
  };

  // ctx: {port, role, lines: Set, link, notify(text, kind), focusTerminal(), isWriter(), writer()}
  function setupActions(ctx) {
    const port = ctx.port;
    const canWrite = ctx.role === "operator" || ctx.role === "admin";
    const canLines = ctx.role === "admin" && ctx.lines.size > 0;
    for (const group of document.querySelectorAll("[data-needs=write]")) group.hidden = !canWrite;
    for (const group of document.querySelectorAll("[data-needs=lines]")) group.hidden = !canLines;
    if (!canLines) {
      for (const button of document.querySelectorAll("[data-line]")) button.remove();
    } else {
      $("btn-nmi").hidden = !ctx.lines.has("nmi");
      $("btn-reset").hidden = !ctx.lines.has("reset");
      const power = ["on", "off", "force-off", "cycle"].filter((a) => ctx.lines.has(a));
      $("btn-power").hidden = power.length === 0;
      for (const button of document.querySelectorAll("[data-power]")) {
        if (!power.includes(button.dataset.power)) button.remove();
      }
    }
    if (!canWrite) {
      // not only hidden: a viewer's page has no write controls at all
      for (const group of document.querySelectorAll("[data-needs=write]")) group.remove();
      $("dlg-sysrq").remove();
      $("opt-size").closest("label").remove(); // a viewer never types, so never sends a size
    }
    const logBase = `/api/ports/${encodeURIComponent(port)}/log`;
    $("log-text").href = `${logBase}?format=text&strip=1`; // readable; the bridge names the files
    $("log-raw").href = `${logBase}?format=raw`;

    async function post(what, path, body) {
      ctx.notify(`${what} on ${port}…`);
      try {
        const result = await api(`/api/ports/${encodeURIComponent(port)}/${path}`, {
          method: "POST",
          body: body || {},
        });
        ctx.notify(`${what} done on ${port}${describe(result)}.`, "ok");
        return result;
      } catch (err) {
        ctx.notify(`${what} failed: ${err.message}`, "error");
        return null;
      }
    }

    if (canWrite) {
      $("btn-takeover").addEventListener("click", async () => {
        const writer = ctx.writer();
        if (writer && !ctx.isWriter()) {
          const ok = await confirmDialog({
            title: `Take over ${port}?`,
            text: `${writer} is the writer on ${port}. They will become read-only and be told that you took over.`,
            ok: "Take over",
            danger: false,
          });
          if (!ok) return ctx.focusTerminal();
        }
        ctx.link.wantWrite = true;
        if (!ctx.link.control({ type: "takeover" })) ctx.link.takeoverNext = true;
        ctx.focusTerminal();
      });
      $("btn-release").addEventListener("click", () => {
        ctx.link.wantWrite = false;
        ctx.link.control({ type: "release" });
      });
      $("btn-break").addEventListener("click", () => post("BREAK", "break"));
      setupSysrq(ctx, post);
    }
    if (canLines) {
      $("btn-nmi")?.addEventListener("click", async () => {
        const ok = await confirmDialog({
          title: `Send NMI to ${port}?`,
          text: `This pulses the NMI line of ${port}. A Linux target usually panics or dumps state; unsaved data may be lost.`,
          ok: "Send NMI",
        });
        if (ok) await post("NMI", "nmi");
        ctx.focusTerminal();
      });
      $("btn-reset")?.addEventListener("click", async () => {
        const ok = await confirmDialog({
          title: `Reset ${port}?`,
          text: `This presses the reset button of ${port}: the target restarts at once, unsaved data is lost.`,
          ok: "Reset",
        });
        if (ok) await post("Reset", "reset");
        ctx.focusTerminal();
      });
      setupPower(ctx, post);
    }
  }

  function describe(result) {
    if (!result) return "";
    if (result.action === "break") return ` (${result.duration_ms} ms)`;
    if (result.power) return ` (power is ${result.power})`;
    return "";
  }

  function setupSysrq(ctx, post) {
    const dialog = $("dlg-sysrq");
    const list = $("sysrq-keys");
    let table = new Map();
    $("btn-sysrq").addEventListener("click", async () => {
      if (table.size === 0) {
        try {
          const keys = await api("/api/sysrq-keys");
          table = new Map(keys.map((k) => [k.key, k]));
          list.replaceChildren(...keys.map((k) => keyButton(k)));
        } catch (err) {
          ctx.notify(`Cannot load the SysRq keys: ${err.message}`, "error");
          return;
        }
      }
      dialog.showModal();
    });
    $("sysrq-close").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => ctx.focusTerminal());

    // The button's name is its visible text (key, name, description), so a speech-input user can
    // say what they see (WCAG 2.5.3); screen readers also hear "destructive" where it shows ⚠.
    function keyButton(k) {
      return el(
        "button",
        {
          type: "button",
          class: k.destructive ? "sysrq-key destructive" : "sysrq-key",
          "data-key": k.key,
          title: k.description + (k.needs ? ` (needs ${k.needs})` : ""),
          onclick: () => send(k.key, "1s"),
        },
        el("kbd", { text: k.key }),
        el("span", { class: "name", text: k.name + (k.destructive ? " ⚠" : "") }),
        el("span", { class: "what", text: k.description }),
        k.destructive ? el("span", { class: "sr-only", text: " (destructive)" }) : ""
      );
    }

    async function send(keys, interval) {
      const lower = keys.toLowerCase();
      const risky = [...lower].filter((c) => table.get(c)?.destructive);
      if (risky.length) {
        const names = [...new Set(risky)].map((c) => `${c} (${table.get(c).name})`).join(", ");
        const ok = await confirmDialog({
          title: `Send SysRq ${keys} to ${ctx.port}?`,
          text: `${names}: ${risky.length === 1 ? "this key is" : "these keys are"} destructive on ${ctx.port} — the target may lose data, kill processes or restart.`,
          ok: `Send SysRq ${keys}`,
        });
        if (!ok) return;
      }
      dialog.close();
      await post(`SysRq ${keys}`, "sysrq", { keys: lower, interval });
    }

    $("sysrq-seq").addEventListener("submit", (event) => {
      event.preventDefault();
      const keys = $("sysrq-seq-keys").value.replace(/\s+/g, "");
      if (!keys) {
        $("sysrq-seq-keys").focus();
        return;
      }
      send(keys, $("sysrq-interval").value);
    });
  }

  function setupPower(ctx, post) {
    const dialog = $("dlg-power");
    if (!$("btn-power") || $("btn-power").hidden) return;
    $("btn-power").addEventListener("click", () => {
      const state = ctx.power();
      $("power-state").textContent =
        state && state !== "unknown" ? `The target's power is ${state}.` : "The power state is not sensed on this port.";
      dialog.showModal();
    });
    $("power-close").addEventListener("click", () => dialog.close());
    for (const button of dialog.querySelectorAll("[data-power]")) {
      button.addEventListener("click", async () => {
        const action = button.dataset.power;
        dialog.close();
        const ok = await confirmDialog({
          title: `${button.textContent} ${ctx.port}?`,
          text: `${POWER_TEXT[action]} Port: ${ctx.port}.`,
          ok: button.textContent,
          danger: action !== "on",
        });
        if (ok) await post(`Power ${action}`, "power", { action });
        ctx.focusTerminal();
      });
    }
  }

  window.SB.setupActions = setupActions;
})();
