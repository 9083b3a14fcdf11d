// The Datasets page: the registered datasets of the granted instruments, filtered by the
// server (instrument, verdict, operator, proposal, dates) and searched here (id, file,
// operator, proposal), each with its current snapshot's verdict badges.
"use strict";
(function () {
  const { api, el, badges, time, failed } = window.bt;
  const form = document.getElementById("dataset-filters");
  const box = document.getElementById("datasets");
  let rows = [];

  function render() {
    const needle = form.q.value.trim().toLowerCase();
    const shown = rows.filter((d) => !needle || [d.id, d.file.name, d.operator, d.proposal, d.instrument_id]
      .some((v) => v && v.toLowerCase().includes(needle)));
    if (!shown.length) { box.replaceChildren(el("p", { text: "No dataset matches." })); box.dataset.state = "ready"; return; }
    box.replaceChildren(el("table", { class: "datasets", "aria-label": "Datasets" },
      el("thead", {}, el("tr", {}, ["Dataset", "Instrument", "Acquired", "File", "Operator", "Proposal", "Verdicts"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, shown.map((d) => el("tr", { "data-dataset": d.id },
        el("td", {}, el("a", { href: `/ui/datasets/${encodeURIComponent(d.id)}`, text: d.id })),
        el("td", { text: d.instrument_id }),
        el("td", { text: time(d.start_time) }),
        el("td", { class: "clip", text: d.file.name }),
        el("td", { text: d.operator || "—" }),
        el("td", { text: d.proposal || "—" }),
        el("td", {}, d.current ? badges(d.current.verdict_counts) : el("span", { class: "badge unverified", text: "not verified yet" })))))));
    box.dataset.state = "ready";
  }

  async function load() {
    const q = new URLSearchParams({ limit: "500" });
    for (const name of ["instrument", "verdict", "operator", "proposal"]) if (form[name].value) q.set(name, form[name].value);
    if (form.start.value) q.set("start", `${form.start.value}T00:00:00Z`);
    if (form.end.value) q.set("end", `${form.end.value}T23:59:59Z`);
    box.dataset.state = "loading";
    try { rows = await api(`/api/v1/datasets?${q}`); render(); } catch (error) { failed(box, error); }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  form.q.addEventListener("input", render);
  for (const name of ["instrument", "verdict"]) form[name].addEventListener("change", load);
  api("/api/v1/instruments").then((instruments) => {
    for (const i of instruments) form.instrument.append(el("option", { value: i.id, text: i.id }));
  }).catch(() => {});
  load();
})();
