// The Instruments page: one card per granted instrument with the twin's live estimates from
// the state stream (value ± std, age) and the flags still open.
"use strict";
(function () {
  const { api, el, number, age, time, failed } = window.bt;
  const KEY = ["energy", "defocus", "convergence_semiangle", "probe_current", "holder_temperature", "stage_x", "stage_y", "stage_z"];
  const LABEL = {
    energy: "High tension (energy)", defocus: "Defocus", convergence_semiangle: "Convergence semi-angle",
    probe_current: "Probe current", holder_temperature: "Holder temperature",
    stage_x: "Stage x", stage_y: "Stage y", stage_z: "Stage z",
  };
  // Browsers keep at most 6 connections per server over HTTP/1.1: the first few instruments
  // stream, the others are read again every 10 s.
  const MAX_STREAMS = 3;
  const root = document.getElementById("instruments");

  function rowsTable(names, byName, label) {
    const rows = names.map((q) => {
      const e = byName.get(q);
      return el("tr", { "data-quantity": q },
        el("th", { scope: "row", text: LABEL[q] || q }),
        el("td", { class: "num value", text: number(e.value, 6) }),
        el("td", { class: "num std", text: "± " + number(e.std, 2) }),
        el("td", { text: e.unit }),
        el("td", { class: "num age", "data-time": e.time, text: age(e.age_s) }));
    });
    return el("table", { class: "state", "aria-label": label },
      el("thead", {}, el("tr", {}, ["Quantity", "Value", "Std", "Unit", "Age"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows));
  }

  // The key quantities in view; the rest of the twin's state one click away.
  function estimatesTable(state, open) {
    const byName = new Map(state.estimates.map((e) => [e.quantity, e]));
    if (!byName.size) return el("p", { class: "hint", text: "No twin estimates yet." });
    const key = KEY.filter((q) => byName.has(q));
    const more = [...byName.keys()].filter((q) => !KEY.includes(q)).sort();
    return el("div", {}, key.length ? rowsTable(key, byName, "Key twin estimates") : null,
      more.length ? el("details", { open }, el("summary", { text: `${more.length} more quantities` }),
        rowsTable(more, byName, "More twin estimates")) : null);
  }

  function flagsList(flags) {
    const open = flags.filter((f) => f.end_time === null);
    if (!open.length) return el("p", { class: "ok", text: "No open flags." });
    return el("ul", { class: "flags" }, open.slice(-8).reverse().map((f) =>
      el("li", { class: `sev-${f.severity}` },
        el("span", { class: `badge sev-${f.severity}`, text: f.severity }), " ",
        `${f.kind} of ${f.quantity || f.channel || "?"} since ${time(f.time)}`)));
  }

  function card(instrument) {
    const stateBox = el("div", { class: "state-box", "data-state": "loading" }, el("p", { text: "Waiting for the state…" }));
    const flagsBox = el("div", { class: "flags-box" });
    const stamp = el("p", { class: "hint stamp" });
    const node = el("article", { class: "card instrument", "data-instrument": instrument.id },
      el("h2", {}, el("a", { href: `/ui/instruments/${encodeURIComponent(instrument.id)}`, text: instrument.id })),
      el("p", { class: "hint", text: [instrument.vendor, instrument.model, instrument.serial_number].filter(Boolean).join(" · ") }),
      stateBox, stamp, el("h3", { text: "Open flags" }), flagsBox);
    return { node, stateBox, flagsBox, stamp };
  }

  function show(parts, state) {
    const details = parts.stateBox.querySelector("details");
    parts.stateBox.replaceChildren(estimatesTable(state, Boolean(details && details.open)));
    parts.stateBox.dataset.state = "live";
    parts.stateBox.dataset.at = state.at;
    parts.stateBox.dataset.received = String(Date.now());
    // The newest sample of any channel: how fresh the telemetry behind the estimates is.
    const ages = state.channels.map((c) => c.age_s).filter((a) => a !== null && a !== undefined);
    const newest = ages.length ? Math.min(...ages) : null;
    parts.stamp.replaceChildren(`as of ${time(state.at)} · newest telemetry `,
      el("span", { class: "telemetry-age", text: newest === null ? "none" : `${age(newest)} old` }));
  }

  async function refreshFlags(instrument, parts) {
    const end = new Date();
    const start = new Date(end.getTime() - 7 * 86400e3);
    try {
      const flags = await api(`/api/v1/instruments/${encodeURIComponent(instrument.id)}/flags?start=${start.toISOString()}&end=${end.toISOString()}`);
      parts.flagsBox.replaceChildren(flagsList(flags));
    } catch (error) { failed(parts.flagsBox, error); }
  }

  function stream(instrument, parts) {
    const source = new EventSource(`/api/v1/instruments/${encodeURIComponent(instrument.id)}/state/stream?interval=1`);
    let events = 0;
    source.addEventListener("state", (event) => {
      show(parts, JSON.parse(event.data));
      // The flags are read again every 10 events (10 s).
      if (events++ % 10 === 0) refreshFlags(instrument, parts);
    });
    source.addEventListener("end", () => { source.close(); setTimeout(() => stream(instrument, parts), 1000); });
    source.addEventListener("error", (event) => {
      if (event.data) { source.close(); failed(parts.stateBox, new Error(JSON.parse(event.data).detail)); }
    });
  }

  async function poll(instrument, parts) {
    try { show(parts, await api(`/api/v1/instruments/${encodeURIComponent(instrument.id)}/state`)); }
    catch (error) { failed(parts.stateBox, error); }
    refreshFlags(instrument, parts);
    setTimeout(() => poll(instrument, parts), 10000);
  }

  // Ages advance between events.
  setInterval(() => {
    for (const cell of document.querySelectorAll("td.age[data-time]")) {
      const box = cell.closest(".state-box");
      const at = Date.parse(box.dataset.at);
      if (!box.dataset.received) continue;
      cell.textContent = age((at - Date.parse(cell.dataset.time)) / 1000 + (Date.now() - Number(box.dataset.received)) / 1000);
    }
  }, 1000);

  api("/api/v1/instruments").then((instruments) => {
    root.replaceChildren();
    if (!instruments.length) root.append(el("p", { text: "No instrument is granted to you." }));
    instruments.forEach((instrument, i) => {
      const parts = card(instrument);
      root.append(parts.node);
      if (i < MAX_STREAMS) stream(instrument, parts); else poll(instrument, parts);
    });
    root.dataset.state = "ready";
  }).catch((error) => failed(root, error));
})();
