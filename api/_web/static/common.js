// Shared helpers of the dashboard's pages: API calls with the session cookie (and its CSRF
// token on writes), DOM building from text only (never HTML strings), number formatting.
"use strict";
(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : null;

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.detail) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, options = {}) {
    const init = { credentials: "same-origin", ...options, headers: { Accept: "application/json", ...(options.headers || {}) } };
    if (init.method && init.method !== "GET") {
      init.headers["X-CSRF-Token"] = csrf;
      if (init.body && typeof init.body !== "string") {
        init.body = JSON.stringify(init.body);
        init.headers["Content-Type"] = "application/json";
      }
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      window.location.assign("/ui/signin?next=" + encodeURIComponent(location.pathname + location.search));
      throw new ApiError(401, null);
    }
    let body = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) body = await response.json();
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function table(headers, rows, caption) {
    return el("table", {},
      caption ? el("caption", { text: caption }) : null,
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
  }

  function number(value, digits = 4) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    const a = Math.abs(value);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return value.toExponential(digits - 1);
    return Number(value.toPrecision(digits)).toString();
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, seconds);
    if (s < 90) return `${s.toFixed(0)} s`;
    if (s < 5400) return `${(s / 60).toFixed(0)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }

  function time(iso) {
    if (!iso) return "—";
    return iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC").replace("+00:00", " UTC");
  }

  const VERDICT_ORDER = ["disagrees", "stale", "placeholder", "missing", "unverifiable", "consistent"];
  function badge(verdict, count) {
    const text = count === undefined ? verdict : `${verdict} ${count}`;
    return el("span", { class: `badge verdict-${verdict}`, text });
  }
  function badges(counts) {
    const keys = Object.keys(counts || {}).sort((a, b) => VERDICT_ORDER.indexOf(a) - VERDICT_ORDER.indexOf(b));
    return el("span", { class: "badges" }, keys.map((k) => badge(k, counts[k])));
  }

  function failed(container, error) {
    container.replaceChildren(el("p", { class: "error", role: "alert", text: `Could not load: ${error.message}` }));
    container.dataset.state = "error";
  }

  window.bt = { api, el, table, number, age, time, badge, badges, failed, csrf, ApiError, VERDICT_ORDER };
})();
