// Lets xterm.js run under the pages' strict Content-Security-Policy (no 'unsafe-inline').
//
// xterm.js creates <style> elements for its theme and cell sizes and sets some cells' colours with
// setAttribute("style", ...). CSP blocks both unless styles may be inline. This shim, loaded before
// xterm.js, gives every <style> element created from script the nonce that the server put in this
// response's policy and <meta name="sb-style-nonce">, and turns setAttribute("style", v) into the
// CSSOM assignment element.style.cssText = v, which CSP permits. Style markup injected into the page
// (without the nonce) stays blocked.
(function () {
  "use strict";
  const meta = document.querySelector('meta[name="sb-style-nonce"]');
  const nonce = meta ? meta.getAttribute("content") : "";
  if (meta) meta.remove();
  const createElement = Document.prototype.createElement;
  Document.prototype.createElement = function (name, options) {
    const element = createElement.call(this, name, options);
    if (nonce && String(name).toLowerCase() === "style") element.setAttribute("nonce", nonce);
    return element;
  };
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === "style" && this.style) {
      this.style.cssText = String(value);
      return;
    }
    setAttribute.call(this, name, value);
  };
})();
