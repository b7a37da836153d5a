// The sign-in form: POST /api/login {username, password, totp?}; then on to ?next= (a local path).
(function () {
  "use strict";
  const { $ } = window.SB;

  // `next` as a path on this site, or null. It is resolved the way the browser will resolve it,
  // against our own origin, and must stay there: "/\t/evil.example" passes a naive "starts with
  // one slash" test, but the URL parser drops tabs and newlines and goes to //evil.example.
  function localPath(next) {
    if (typeof next !== "string" || !next.startsWith("/")) return null;
    if (/[\u0000-\u0020\u007f-\u00a0\\]/.test(next)) return null; // controls, spaces, backslash
    let url;
    try {
      url = new URL(next, location.origin);
    } catch (_) {
      return null;
    }
    return url.origin === location.origin ? url.pathname + url.search + url.hash : null;
  }
  window.SB.localPath = localPath; // for the browser tests

  function nextPath() {
    return localPath(new URLSearchParams(location.search).get("next") || "/") || "/";
  }

  function showError(message) {
    const box = $("login-error");
    box.textContent = message;
    box.hidden = false;
  }

  async function submit(event) {
    event.preventDefault();
    const button = $("login-submit");
    const body = { username: $("username").value.trim(), password: $("password").value };
    const totp = $("totp").value.replace(/\s+/g, "");
    if (totp) body.totp = totp;
    if (!body.username || !body.password) {
      showError("Enter your user name and password.");
      return;
    }
    button.disabled = true;
    $("login-error").hidden = true;
    try {
      const response = await fetch("/api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify(body),
      });
      let answer = {};
      try {
        answer = await response.json();
      } catch (_) {
        answer = {};
      }
      if (response.ok) {
        location.assign(nextPath());
        return;
      }
      let message = answer.error || `Sign-in failed (HTTP ${response.status}).`;
      if (response.status === 429) {
        const wait = response.headers.get("Retry-After");
        message = `Too many attempts; try again${wait ? ` in ${wait} s` : " later"}.`;
      }
      if (/totp|one-time|otp/i.test(message) || answer.totp_required) {
        $("totp").focus();
      } else {
        $("password").select();
      }
      showError(message);
    } catch (err) {
      showError(`Cannot reach the bridge: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // single sign-on, when the bridge has it: "Sign in with NAME" beside (or instead of) the form
  async function offerSso() {
    let info = null;
    try {
      const response = await fetch("/api/sso", { credentials: "same-origin" });
      info = response.ok ? await response.json() : null;
    } catch (_) {
      return;
    }
    if (!info || !info.enabled) return;
    const link = $("sso-login");
    link.textContent = `Sign in with ${info.name}`;
    link.href = "/oidc/login?next=" + encodeURIComponent(nextPath());
    $("sso").hidden = false;
    if (!info.password_login) $("login-form").hidden = true;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", submit);
    offerSso();
  });
})();
