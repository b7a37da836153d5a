// The console page's "Recovery…" dialog (admins): pick a recovery playbook, see what it does and
// its parameters (defaults filled in), confirm, and run it on this port. While one runs, every
// page shows its step in the status bar (from the port's status messages), and admins get a
// "Stop playbook" button. Exposed as window.SB.setupRescue(ctx) and SB.showPlaybook(status).
(function () {
  "use strict";
  const { api, $, el, confirmDialog, whoami } = window.SB;

  // The status bar pill: "playbook grub-rescue running, step 3/11: stop GRUB's menu (alice)".
  function showPlaybook(run) {
    const pill = $("st-playbook");
    const stop = $("btn-rescue-cancel");
    if (!pill) return;
    pill.hidden = !run;
    pill.textContent = run ? `playbook ${run.name} running, step ${run.step}/${run.of}: ${run.title} (${run.user})` : "";
    if (stop) stop.hidden = !run;
  }

  // POST .../rescue answers JSON lines: steps, then the result (the last line).
  async function runPlaybook(port, playbook, args) {
    const session = await whoami();
    const response = await fetch(`/api/ports/${encodeURIComponent(port)}/rescue`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf || "" },
      body: JSON.stringify({ playbook, args }),
    });
    const text = await response.text();
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try {
        message = JSON.parse(text).error || message;
      } catch (_) {
        /* not JSON */
      }
      throw new Error(message);
    }
    const lines = text.trim().split("\n");
    return JSON.parse(lines[lines.length - 1]);
  }

  // ctx: {port, role, notify(text, kind), focusTerminal()}
  function setupRescue(ctx) {
    const admin = ctx.role === "admin";
    for (const group of document.querySelectorAll("[data-needs=admin]")) group.hidden = !admin;
    if (!admin) {
      for (const group of document.querySelectorAll("[data-needs=admin]")) group.remove();
      $("dlg-rescue").remove();
      return;
    }
    const dialog = $("dlg-rescue");
    const select = $("rescue-book");
    let books = [];

    function showBook() {
      const book = books.find((b) => b.name === select.value);
      $("rescue-desc").textContent = book ? book.description : "";
      const fields = (book ? book.params : []).map((p) => {
        const id = `rescue-param-${p.name}`;
        const hint = `${id}-hint`;
        const input = p.choices
          ? el("select", { id, name: p.name, "aria-describedby": hint }, ...p.choices.map((c) => el("option", { value: c, text: c, selected: c === p.default })))
          : el("input", { id, name: p.name, value: p.default, autocomplete: "off", spellcheck: "false", "aria-describedby": hint });
        return el("div", {}, el("label", { for: id, text: p.name }), input, el("p", { id: hint, class: "hint", text: p.description }));
      });
      $("rescue-params").replaceChildren(...fields);
    }

    $("btn-rescue").addEventListener("click", async () => {
      try {
        books = await api("/api/playbooks");
      } catch (err) {
        ctx.notify(`Cannot load the playbooks: ${err.message}`, "error");
        return;
      }
      const chosen = select.value;
      select.replaceChildren(...books.map((b) => el("option", { value: b.name, text: b.name })));
      if (books.some((b) => b.name === chosen)) select.value = chosen;
      showBook();
      dialog.showModal();
      select.focus();
    });
    select.addEventListener("change", showBook);
    $("rescue-close").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => ctx.focusTerminal());

    $("rescue-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = select.value;
      const args = {};
      for (const input of $("rescue-params").querySelectorAll("input, select")) args[input.name] = input.value;
      dialog.close();
      const ok = await confirmDialog({
        title: `Run ${name} on ${ctx.port}?`,
        text: `The playbook types into ${ctx.port}'s console and may reset or power-cycle it. Nobody else can type until it ends or is stopped.`,
        ok: `Run ${name}`,
      });
      if (!ok) return;
      ctx.notify(`Playbook ${name} started on ${ctx.port}…`);
      try {
        const result = await runPlaybook(ctx.port, name, args);
        if (result.result === "ok") ctx.notify(`Playbook ${name} done on ${ctx.port} in ${result.seconds} s.`, "ok");
        else if (result.result === "cancelled") ctx.notify(`Playbook ${name} was stopped by ${result.by} at step ${result.step}.`, "warn");
        else ctx.notify(`Playbook ${name} failed at step ${result.step} (${result.title}): ${result.message}`, "error");
      } catch (err) {
        ctx.notify(`Playbook ${name} refused: ${err.message}`, "error");
      }
    });

    $("btn-rescue-cancel").addEventListener("click", async () => {
      try {
        await api(`/api/ports/${encodeURIComponent(ctx.port)}/rescue/cancel`, { method: "POST", body: {} });
      } catch (err) {
        ctx.notify(`Cannot stop the playbook: ${err.message}`, "error");
      }
    });
  }

  window.SB.setupRescue = setupRescue;
  window.SB.showPlaybook = showPlaybook;
})();
