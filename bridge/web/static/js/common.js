// Shared by every page: the JSON API with the session's CSRF token, sign-out, small DOM helpers
// and an accessible confirmation dialog. Exposed as window.SB.
(function () {
  "use strict";

  let session = null; // {user, role, csrf} from GET /api/csrf

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, options = {}) {
    const init = { method: options.method || "GET", headers: {}, credentials: "same-origin" };
    if (options.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    if (init.method !== "GET") {
      const s = await whoami();
      if (s.csrf) init.headers["X-CSRF-Token"] = s.csrf;
    }
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401 && options.redirect !== false) {
      toLogin();
      throw new ApiError(401, "signed out", body);
    }
    if (!response.ok) {
      const message = body && body.error ? body.error : `HTTP ${response.status}`;
      throw new ApiError(response.status, message, body);
    }
    return body;
  }

  async function whoami(refresh = false) {
    if (!session || refresh) session = await api("/api/csrf");
    return session;
  }

  let leaving = false; // signing out: the page goes to /login itself

  function toLogin() {
    if (leaving) return;
    const next = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(next));
  }

  async function logout() {
    leaving = true;
    let answer = null;
    try {
      answer = await api("/api/logout", { method: "POST", redirect: false });
    } catch (_) {
      /* signed out anyway */
    }
    // single sign-on: the identity provider's own logout, which comes back to /login
    if (answer && typeof answer.end_session === "string" && answer.end_session.startsWith("https://")) {
      location.assign(answer.end_session);
      return;
    }
    location.assign("/login");
  }

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value === true) node.setAttribute(key, "");
      else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // A modal confirmation: resolves true when the user confirms, false on Cancel or Escape.
  function confirmDialog({ title, text, ok = "Confirm", danger = true }) {
    return new Promise((resolve) => {
      const okButton = el("button", { type: "button", class: danger ? "danger" : "primary", text: ok });
      const cancel = el("button", { type: "button", class: "quiet", text: "Cancel" });
      const heading = el("h2", { id: "confirm-title", text: title });
      const body = el("p", { id: "confirm-text", text: text });
      const dialog = el(
        "dialog",
        { class: "confirm", "aria-labelledby": "confirm-title", "aria-describedby": "confirm-text" },
        heading,
        body,
        el("div", { class: "dialog-buttons" }, cancel, okButton)
      );
      let answer = false;
      okButton.addEventListener("click", () => {
        answer = true;
        dialog.close();
      });
      cancel.addEventListener("click", () => dialog.close());
      dialog.addEventListener("close", () => {
        dialog.remove();
        resolve(answer);
      });
      document.body.append(dialog);
      dialog.showModal();
      cancel.focus(); // the safe choice has the focus: Enter does not fire a destructive action
    });
  }

  async function showMe(element) {
    if (!element) return;
    try {
      const s = await whoami();
      element.textContent = `${s.user} (${s.role})`;
    } catch (_) {
      /* api() redirects on 401 */
    }
  }

  const isLeaving = () => leaving;

  window.SB = { api, whoami, logout, toLogin, isLeaving, $, el, confirmDialog, showMe, ApiError };

  document.addEventListener("DOMContentLoaded", () => {
    const button = $("logout");
    if (button) button.addEventListener("click", logout);
  });
})();
