// The dataset page: the current snapshot's fields (file value, twin value, verdict, reason),
// the version history, the operators' correction form and the provenance graph (cytoscape).
"use strict";
(function () {
  const { api, el, table, number, badge, badges, time, failed } = window.bt;
  const root = document.getElementById("dataset");
  const id = root.dataset.dataset;
  const base = `/api/v1/datasets/${encodeURIComponent(id)}`;
  const fieldsBox = document.getElementById("fields");
  const form = document.getElementById("correction");

  function value(v, unit) {
    if (v === null || v === undefined) return "—";
    return typeof v === "number" ? `${number(v, 6)}${unit ? " " + unit : ""}` : String(v);
  }

  async function snapshot() {
    try {
      const snap = await api(`${base}/snapshot`);
      document.getElementById("snapshot-version").textContent = `version ${snap.version} · ${snap.overall}`;
      const fields = (snap.body && snap.body.fields) || {};
      const names = Object.keys(fields).sort();
      fieldsBox.replaceChildren(table(["Field", "File value", "Twin value", "Verdict", "Reason"], names.map((n) => {
        const f = fields[n];
        const twin = f.expected === undefined ? "—" : value(f.expected, f.unit) + (f.tolerance ? ` ± ${number(f.tolerance, 3)}` : "");
        return [el("code", { text: n }), value(f.reported, f.unit), twin, badge(f.verdict || "unknown"), f.note || f.reason || ""];
      })));
      fieldsBox.querySelector("table").classList.add("fields");
      fieldsBox.dataset.state = "ready";
      fieldsBox.dataset.version = String(snap.version);
      if (form) {
        form.field.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
      }
    } catch (error) {
      if (error.status === 404) {
        fieldsBox.replaceChildren(el("p", { text: "Not verified yet: the snapshot worker has not made a snapshot." }));
        fieldsBox.dataset.state = "ready";
      } else failed(fieldsBox, error);
    }
  }

  async function history() {
    const box = document.getElementById("history");
    try {
      const versions = await api(`${base}/snapshots`);
      box.replaceChildren(table(["Version", "Made", "By", "Reason", "Verdicts"], versions.slice().reverse().map((s) =>
        [String(s.version), time(s.created_at), s.actor, s.reason, badges(s.verdict_counts)])));
      box.querySelector("table").classList.add("history");
      box.dataset.versions = String(versions.length);
    } catch (error) { failed(box, error); }
  }

  const KIND_COLOR = { entity: "#e8c15a", activity: "#7ba7d9", agent: "#e39a7b" };
  const RELATIONS = { wasGeneratedBy: "entity", activity: "activity" };

  async function provenance() {
    const box = document.getElementById("prov-graph");
    try {
      const doc = await api(`${base}/provenance`);
      const nodes = [];
      for (const kind of ["entity", "activity", "agent"]) {
        for (const [name, attrs] of Object.entries(doc[kind] || {})) {
          const labelAttr = attrs["prov:label"];
          const text = (typeof labelAttr === "string" ? labelAttr : (labelAttr && labelAttr.$)) || name.split(":").pop();
          nodes.push({ data: { id: name, label: text.length > 40 ? text.slice(0, 38) + "…" : text, kind, color: KIND_COLOR[kind] } });
        }
      }
      const known = new Set(nodes.map((n) => n.data.id));
      const edges = [];
      for (const [relation, entries] of Object.entries(doc)) {
        if (["entity", "activity", "agent", "prefix"].includes(relation)) continue;
        for (const [rid, attrs] of Object.entries(entries || {})) {
          const ends = Object.entries(attrs).filter(([k, v]) => k.startsWith("prov:") && typeof v === "string" && known.has(v)).map(([, v]) => v);
          if (ends.length >= 2) edges.push({ data: { id: `${relation}-${rid}`, source: ends[0], target: ends[1], label: relation.replace(/^was/, "") } });
        }
      }
      box.replaceChildren();
      window.cytoscape({
        container: box,
        elements: { nodes, edges },
        layout: { name: "breadthfirst", directed: true, spacingFactor: 1.1, padding: 12 },
        userZoomingEnabled: false,
        style: [
          { selector: "node", style: { "background-color": "data(color)", label: "data(label)", "font-size": 10, "text-wrap": "wrap", "text-max-width": 140, "text-valign": "bottom", shape: "round-rectangle", width: 18, height: 18 } },
          { selector: 'node[kind = "activity"]', style: { shape: "rectangle" } },
          { selector: 'node[kind = "agent"]', style: { shape: "ellipse" } },
          { selector: "edge", style: { width: 1, "line-color": "#888", "target-arrow-color": "#888", "target-arrow-shape": "triangle", "curve-style": "bezier", label: "data(label)", "font-size": 8, color: "#555" } },
        ],
      });
      box.dataset.nodes = String(nodes.length);
      box.dataset.edges = String(edges.length);
      box.setAttribute("aria-label", `Provenance graph: ${nodes.length} records (${nodes.filter((n) => n.data.kind === "entity").length} entities, ${nodes.filter((n) => n.data.kind === "activity").length} activities, ${nodes.filter((n) => n.data.kind === "agent").length} agents) and ${edges.length} relations`);
      document.getElementById("prov-legend").replaceChildren(
        ...["entity", "activity", "agent"].map((k) => el("span", { class: `prov-key prov-key-${k}`, text: k })));
    } catch (error) { failed(box, error); }
  }

  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = document.getElementById("correction-result");
      const change = {};
      if (form.verdict.value) change.verdict = form.verdict.value;
      if (form.note.value) change.note = form.note.value;
      try {
        const snap = await api(`${base}/snapshot/corrections`, { method: "POST", body: { reason: form.reason.value, fields: { [form.field.value]: change } } });
        result.textContent = `Stored version ${snap.version}.`;
        result.className = "ok";
        form.reason.value = "";
        await Promise.all([snapshot(), history(), provenance()]);
      } catch (error) {
        result.textContent = `Not stored: ${error.message}`;
        result.className = "error";
      }
    });
  }
  snapshot();
  history();
  provenance();
})();
