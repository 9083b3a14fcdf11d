// The Experiments page: the form built from the experiment spec's JSON Schema (operators and
// admins), the cost estimate before submitting, the fast preview's sliders, the list of
// experiments, and one experiment's progress (server-sent events) and result images with a
// dose slider and the ensemble's standard deviation.
"use strict";
(function () {
  const { api, el, number, time, failed } = window.bt;
  const SCHEMA = JSON.parse(document.getElementById("spec-schema").textContent);
  const role = (document.getElementById("who") || { dataset: {} }).dataset.role;
  const canOperate = role === "operator" || role === "admin";
  const MODE_LABEL = { stem: "STEM", "4dstem": "4D-STEM", hrtem: "HRTEM", cbed: "CBED", diffraction: "Plane-wave diffraction" };
  const PREVIEW_MODES = new Set(["stem", "hrtem"]);
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  // ---------------------------------------------------------------- the spec's JSON Schema
  function resolve(node) {
    if (!node) return {};
    if (node.$ref) return resolve(SCHEMA.$defs[node.$ref.split("/").pop()]);
    if (node.anyOf) {
      const others = node.anyOf.filter((n) => n.type !== "null");
      if (others.length === 1) {
        const { anyOf, ...rest } = node;
        return { ...resolve(others[0]), ...rest, nullable: true };
      }
    }
    return node;
  }
  const def = (name) => SCHEMA.$defs[name];
  const prop = (owner, name) => resolve(owner.properties[name]);
  function unitOf(node) {
    const m = /\[([^\]]+)\]/.exec(node.description || "");
    return m ? m[1] : "";
  }
  function modeDefs() {
    const mapping = SCHEMA.properties.mode.discriminator.mapping;
    return Object.entries(mapping).map(([mode, ref]) => [mode, resolve({ $ref: ref })]);
  }

  function fieldId(name) { return "f-" + name.replace(/[^a-zA-Z0-9]+/g, "-"); }

  // One number field with the bounds, default, unit and help of its schema node.
  function numberField(node, name, label, { value, placeholder, required } = {}) {
    const attrs = { id: fieldId(name), name, type: "number", step: node.type === "integer" ? "1" : "any" };
    if (node.minimum !== undefined) attrs.min = node.minimum;
    else if (node.exclusiveMinimum !== undefined) attrs.min = node.exclusiveMinimum;
    if (node.maximum !== undefined) attrs.max = node.maximum;
    const initial = value !== undefined ? value : node.default;
    if (initial !== undefined && initial !== null) attrs.value = initial;
    if (placeholder) attrs.placeholder = placeholder;
    if (required) attrs.required = true;
    const unit = unitOf(node);
    return el("label", { title: node.description || null },
      unit ? `${label} [${unit}]` : label, el("input", attrs));
  }

  function readNumber(input) {
    if (!input || input.value.trim() === "") return undefined;
    const value = Number(input.value);
    if (!Number.isFinite(value)) throw new Error(`${input.name}: not a number`);
    return value;
  }

  // ---------------------------------------------------------------- the form
  const form = document.getElementById("experiment-form");
  const estimateBox = document.getElementById("estimate");
  const submitButton = document.getElementById("submit-experiment");
  const submitResult = document.getElementById("submit-result");
  let specimens = [];
  let lastEstimate = null;

  // Overrides: the state's quantities (StateV1, units from its schema) and the aberrations
  // the twin estimates; blank keeps the twin's value.
  const ABERRATIONS = [
    ["defocus", "Defocus (= −C10)", "Å"], ["C12", "Two-fold astigmatism C12", "Å"],
    ["phi12", "Astigmatism angle φ12", "rad"], ["C30", "Spherical aberration C30 (Cs)", "Å"],
  ];
  const KEY_OVERRIDES = ["defocus", "energy", "convergence_semiangle"];
  function overrideNodes() {
    const state = def("StateV1");
    const nodes = ABERRATIONS.map(([name, label, unit]) => [name, label, { type: "number", description: `${label} [${unit}]` }]);
    for (const [name, node] of Object.entries(state.properties)) {
      // The label is the schema's description, its unit in brackets after it.
      const words = (node.description || node.title).replace(/\s*\[[^\]]*\]/, "");
      if (name !== "aberrations") nodes.push([name, words.charAt(0).toUpperCase() + words.slice(1), resolve(node)]);
    }
    return nodes;
  }

  function detectorEditor(name, rows) {
    const annular = def("AnnularDetectorV1");
    const segmented = def("SegmentedDetectorV1");
    const body = el("tbody", {});
    const box = el("div", { class: "detectors", "data-name": name });
    function row(d) {
      const n = body.children.length + 1;
      const tr = el("tr", {},
        el("td", {}, el("input", { type: "text", name: `${name}.name`, value: d.name, required: true, pattern: annular.properties.name.pattern, "aria-label": `Detector ${n} name`, size: 8 })),
        el("td", {}, el("select", { name: `${name}.kind`, "aria-label": `Detector ${n} kind` },
          [annular.properties.kind.const, segmented.properties.kind.const].map((k) => el("option", { value: k, text: k, selected: k === d.kind })))),
        el("td", {}, el("input", { type: "number", step: "any", min: annular.properties.inner.anyOf[0].minimum, name: `${name}.inner`, value: d.inner, "aria-label": `Detector ${n} inner angle [mrad]` })),
        el("td", {}, el("input", { type: "number", step: "any", min: 0, name: `${name}.outer`, value: d.outer, "aria-label": `Detector ${n} outer angle [mrad]` })),
        el("td", {}, el("button", { type: "button", text: "Remove", "aria-label": `Remove detector ${n}`, onclick: () => { tr.remove(); changed(); } })));
      body.append(tr);
    }
    for (const d of rows) row(d);
    box.append(el("table", { class: "detector-table" },
      el("thead", {}, el("tr", {}, ["Name", "Kind", "Inner [mrad]", "Outer [mrad]", ""].map((h) => el("th", { scope: "col", text: h })))), body),
      el("button", { type: "button", text: "Add a detector", onclick: () => { row({ name: `det${body.children.length + 1}`, kind: "annular", inner: 70, outer: 200 }); changed(); } }));
    return box;
  }

  function readDetectors(box) {
    return [...box.querySelectorAll("tbody tr")].map((tr) => {
      const get = (k) => tr.querySelector(`[name$=".${k}"]`);
      const d = { name: get("name").value.trim(), inner: readNumber(get("inner")), outer: readNumber(get("outer")) };
      if (get("kind").value === "segmented") d.kind = "segmented";
      return d;
    });
  }

  function modeFields(mode) {
    const node = Object.fromEntries(modeDefs())[mode];
    const scan = def("ScanV1");
    const parts = [];
    if (node.description) parts.push(el("p", { class: "hint", text: node.description.replace(/``/g, "") }));
    if (mode === "stem") {
      parts.push(detectorEditor("detectors", [{ name: "haadf", kind: "annular", inner: 70, outer: 200 }]));
    }
    if (node.properties.max_angle) parts.push(numberField(prop(node, "max_angle"), "max_angle", "Largest angle", { placeholder: "all" }));
    if (node.properties.scan) parts.push(numberField(prop(scan, "sampling"), "scan_step", "Probe step", { placeholder: "Nyquist" }));
    if (node.properties.position) {
      parts.push(numberField({ type: "number", description: "probe position x [Å]" }, "position_x", "Probe x", { placeholder: "centre" }),
        numberField({ type: "number", description: "probe position y [Å]" }, "position_y", "Probe y", { placeholder: "centre" }));
    }
    if (mode === "4dstem") {
      parts.push(el("p", { class: "hint", text: "Virtual annular detectors:" }), detectorEditor("virtual_detectors", []));
    }
    return parts;
  }

  function specimenFields(name) {
    const s = specimens.find((x) => x.name === name);
    if (!s) return [];
    return [el("p", { class: "hint", text: s.description }),
      el("div", { class: "fields" }, Object.entries(s.parameters).map(([key, value]) => {
        const id = fieldId(`param-${key}`);
        const input = typeof value === "number"
          ? el("input", { id, type: "number", step: "any", name: `param.${key}`, value, "data-kind": "number" })
          : el("input", { id, type: "text", name: `param.${key}`, value, "data-kind": "text", size: 6 });
        return el("label", {}, key.replace(/_/g, " "), input);
      }))];
  }

  async function buildForm() {
    const params = new URLSearchParams(location.search);
    let instruments;
    [instruments, specimens] = await Promise.all([api("/api/v1/instruments"), api("/api/v1/specimens")]);
    const root = SCHEMA;
    const phonons = def("FrozenPhononsV1");
    const instrument = el("select", { id: "f-instrument", name: "instrument" },
      instruments.map((i) => el("option", { value: i.id, text: i.id, selected: i.id === params.get("instrument") })),
      el("option", { value: "", text: "none: a hypothetical microscope (give its state below)" }));
    const asOf = el("input", { id: "f-as_of", name: "as_of", type: "datetime-local", step: "1" });
    const specimen = el("select", { id: "f-specimen", name: "specimen" },
      specimens.map((s) => el("option", { value: s.name, text: s.name })));
    const specimenBox = el("div", { id: "specimen-parameters" });
    const mode = el("select", { id: "f-mode", name: "mode" },
      modeDefs().map(([m]) => el("option", { value: m, text: MODE_LABEL[m] || m, selected: m === "hrtem" })));
    const modeBox = el("div", { class: "fields", id: "mode-fields" });
    const overrides = overrideNodes();
    const override = ([name, label, node]) => numberField(node, `override.${name}`, label, { value: null, placeholder: "the twin's" });
    form.replaceChildren(
      el("fieldset", {}, el("legend", { text: "Microscope" }),
        el("div", { class: "fields" },
          el("label", { for: "f-instrument" }, "Instrument", instrument),
          el("label", { for: "f-as_of", title: prop(root, "as_of").description }, "State at (UTC; blank: now)", asOf))),
      el("fieldset", {}, el("legend", { text: "Specimen" }),
        el("div", { class: "fields" }, el("label", { for: "f-specimen" }, "Built-in specimen", specimen)), specimenBox),
      el("fieldset", {}, el("legend", { text: "Mode and detectors" }),
        el("div", { class: "fields" }, el("label", { for: "f-mode" }, "Mode", mode)), modeBox),
      el("fieldset", {}, el("legend", { text: "Sampling" }),
        el("div", { class: "fields" },
          numberField(prop(root, "sampling"), "sampling", "Potential sampling"),
          numberField(prop(root, "slice_thickness"), "slice_thickness", "Slice thickness"),
          numberField(prop(phonons, "configurations"), "phonon_configurations", "Phonon configurations"),
          numberField(prop(phonons, "sigma"), "phonon_sigma", "Thermal displacement"))),
      el("fieldset", {}, el("legend", { text: "Doses and ensemble" }),
        el("div", { class: "fields" },
          el("label", { title: prop(root, "doses").description }, `Doses [${unitOf(prop(root, "doses"))}]`,
            el("input", { id: "f-doses", name: "doses", type: "text", placeholder: "e.g. 1000, 1e5 (blank: the state's)", size: 22 })),
          numberField(prop(root, "ensemble_size"), "ensemble_size", "Ensemble size"),
          numberField({ type: "number", minimum: 0, description: "standard deviation of defocus over the ensemble [Å]" }, "defocus_std", "Defocus std", { placeholder: "the twin's" }),
          numberField(prop(root, "seed"), "seed", "Seed"))),
      el("fieldset", {}, el("legend", { text: "What-if overrides" }),
        el("div", { class: "fields", id: "override-fields" }, overrides.filter(([n]) => KEY_OVERRIDES.includes(n)).map(override)),
        el("details", {}, el("summary", { text: "More state quantities" }),
          el("div", { class: "fields" }, overrides.filter(([n]) => !KEY_OVERRIDES.includes(n)).map(override)))),
    );
    specimen.addEventListener("change", () => specimenBox.replaceChildren(...specimenFields(specimen.value)));
    mode.addEventListener("change", () => { modeBox.replaceChildren(...modeFields(mode.value)); buildSliders(); });
    specimenBox.replaceChildren(...specimenFields(specimen.value));
    modeBox.replaceChildren(...modeFields(mode.value));
    // "input" only: a "change" fires again when a field loses focus, as when the submit
    // button is clicked, and would disable that button under the click.
    form.addEventListener("input", changed);
    form.dataset.state = "ready";
  }

  // The spec of the form (``extra``: overrides of the preview's sliders).
  function spec(extra = {}) {
    const f = form.elements;
    const out = { schema: SCHEMA.properties.schema.const };
    const specimenParameters = {};
    for (const input of form.querySelectorAll("[name^='param.']")) {
      const key = input.name.slice(6);
      specimenParameters[key] = input.dataset.kind === "number" ? readNumber(input) : input.value;
    }
    out.specimen = { name: f.specimen.value, parameters: specimenParameters };
    const mode = { mode: f.mode.value };
    const detectors = form.querySelector('.detectors[data-name="detectors"]');
    if (detectors) mode.detectors = readDetectors(detectors);
    const virtual = form.querySelector('.detectors[data-name="virtual_detectors"]');
    if (virtual) mode.virtual_detectors = readDetectors(virtual);
    if (f.max_angle && readNumber(f.max_angle) !== undefined) mode.max_angle = readNumber(f.max_angle);
    if (f.scan_step) mode.scan = readNumber(f.scan_step) === undefined ? {} : { sampling: readNumber(f.scan_step) };
    if (f.position_x && readNumber(f.position_x) !== undefined) mode.position = [readNumber(f.position_x), readNumber(f.position_y) || 0];
    out.mode = mode;
    for (const name of ["sampling", "slice_thickness", "ensemble_size", "seed"]) {
      const v = readNumber(f[name]);
      if (v !== undefined) out[name] = v;
    }
    const phonons = {};
    if (readNumber(f.phonon_configurations) !== undefined) phonons.configurations = readNumber(f.phonon_configurations);
    if (readNumber(f.phonon_sigma) !== undefined) phonons.sigma = readNumber(f.phonon_sigma);
    out.frozen_phonons = phonons;
    const doses = f.doses.value.split(/[\s,;]+/).filter(Boolean).map(Number);
    if (doses.some((d) => !Number.isFinite(d))) throw new Error("doses: numbers separated by commas");
    out.doses = doses;
    const std = readNumber(f.defocus_std);
    if (std !== undefined) out.uncertainty = { std: { defocus: std } };
    const overrides = {};
    for (const input of form.querySelectorAll("[name^='override.']")) {
      const v = readNumber(input);
      if (v !== undefined) overrides[input.name.slice(9)] = v;
    }
    Object.assign(overrides, extra);
    if (f.instrument.value) {
      out.instrument = f.instrument.value;
      out.overrides = overrides;
      if (f.as_of.value) out.as_of = f.as_of.value + (f.as_of.value.length === 16 ? ":00Z" : "Z");
    } else {
      // A hypothetical microscope: the overrides are its whole state.
      const state = { aberrations: {} };
      for (const [name, value] of Object.entries(overrides)) {
        if (name === "defocus") state.aberrations.C10 = -value;
        else if (/^(C|phi)\d\d$/.test(name)) state.aberrations[name] = value;
        else state[name] = value;
      }
      out.state = state;
    }
    return out;
  }

  let estimateTimer = null;
  let estimateSeq = 0;
  function changed(event) {
    if (event && event.target && event.target.name === "instrument") {
      const hint = event.target.value ? "the twin's" : "default";
      for (const input of form.querySelectorAll("[name^='override.']")) input.placeholder = hint;
    }
    clearTimeout(estimateTimer);
    estimateSeq++; // an answer still on its way is of an older form
    estimateTimer = setTimeout(estimate, 350);
    estimateBox.dataset.state = "loading";
    submitButton.disabled = true;
  }

  function describeCost(c) {
    const mib = c.memory_bytes / 2 ** 20;
    return `about ${number(c.seconds, 3)} s on one core and ${number(mib, 3)} MiB at most: ` +
      `a ${c.gpts[0]}×${c.gpts[1]} grid, ${c.slices} slices, ` + (c.positions ? `${c.positions} probe positions, ` : "") +
      `${c.configurations} phonon configuration${c.configurations === 1 ? "" : "s"}, ` +
      `${c.members} ensemble member${c.members === 1 ? "" : "s"}` + (c.plane_waves ? `, ${c.plane_waves} plane waves (PRISM)` : "");
  }

  async function estimate() {
    const seq = ++estimateSeq;
    let body;
    try { body = spec(); } catch (error) {
      estimateBox.replaceChildren(el("p", { class: "error", text: `Check the form: ${error.message}` }));
      estimateBox.dataset.state = "error";
      return;
    }
    estimateBox.dataset.state = "loading";
    try {
      const est = await api("/api/v1/experiments/estimate", { method: "POST", body: { spec: body } });
      if (seq !== estimateSeq) return;
      lastEstimate = est;
      estimateBox.replaceChildren(
        el("p", {}, el("strong", { text: "Cost estimate: " }), describeCost(est.cost), "."),
        el("p", { class: est.within_limits ? "ok" : "error",
          text: est.within_limits ? "Within the limits: it can be submitted." : `Over the limits, it would be refused: ${est.detail}` }));
      estimateBox.dataset.state = est.within_limits ? "ok" : "over";
      estimateBox.dataset.seconds = String(est.cost.seconds);
      submitButton.disabled = !est.within_limits || !canOperate;
      showTwinState(est.state.state);
      schedulePreview();
    } catch (error) {
      if (seq !== estimateSeq) return;
      lastEstimate = null;
      estimateBox.replaceChildren(el("p", { class: "error", text: `It cannot run as it is: ${error.message}` }));
      estimateBox.dataset.state = "error";
      submitButton.disabled = true;
    }
  }

  // The state the experiment would run with, as the overrides' placeholders and the
  // sliders' starting points.
  function stateValue(state, name) {
    if (name === "defocus") return state.aberrations.C10 === undefined ? 0 : -state.aberrations.C10;
    if (/^(C|phi)\d\d$/.test(name)) return state.aberrations[name] || 0;
    return state[name];
  }
  function showTwinState(state) {
    for (const input of form.querySelectorAll("[name^='override.']")) {
      const v = stateValue(state, input.name.slice(9));
      if (v === undefined) continue;
      input.placeholder = form.elements.instrument.value ? `now ${number(v, 5)}` : `default ${number(v, 5)}`;
    }
    for (const slider of sliders) {
      if (slider.touched) continue;
      slider.center(stateValue(state, slider.name));
    }
  }

  submitButton && submitButton.addEventListener("click", async () => {
    submitButton.disabled = true;
    submitResult.className = "";
    submitResult.textContent = "Submitting…";
    try {
      const force = document.getElementById("force").checked;
      const job = await api("/api/v1/experiments", { method: "POST", body: { spec: spec(), force } });
      submitResult.textContent = job.reused
        ? `The same experiment in the same state ran before: ${job.id} (tick "run again" to repeat it).`
        : `Queued ${job.id}.`;
      submitResult.className = "ok";
      submitResult.dataset.job = job.id;
      await loadList();
      await select(job.id);
      document.getElementById("experiment-detail").scrollIntoView({ block: "start" });
    } catch (error) {
      submitResult.textContent = `Not submitted: ${error.message}`;
      submitResult.className = "error";
    } finally {
      submitButton.disabled = !(lastEstimate && lastEstimate.within_limits);
    }
  });

  // ---------------------------------------------------------------- the fast preview
  const sliderBox = document.getElementById("preview-sliders");
  const canvas = document.getElementById("preview-canvas");
  const previewStatus = document.getElementById("preview-status");
  const SLIDERS = [
    { name: "defocus", label: "Defocus", unit: "Å", half: 300, step: 1 },
    { name: "C12", label: "Astigmatism C12", unit: "Å", min: 0, max: 200, step: 1 },
    { name: "phi12", label: "Astigmatism angle φ12", unit: "rad", min: -1.57, max: 1.57, step: 0.01 },
    { name: "convergence_semiangle", label: "Convergence semi-angle", unit: "mrad", min: 1, max: 50, step: 0.5, stem: true },
  ];
  let sliders = [];

  function buildSliders() {
    if (!sliderBox) return;
    const stem = form.elements.mode && form.elements.mode.value === "stem";
    const old = new Map(sliders.map((s) => [s.name, s]));
    sliders = SLIDERS.filter((d) => !d.stem || stem).map((d) => {
      const id = `slider-${d.name}`;
      const input = el("input", { id, type: "range", name: d.name, step: d.step, min: d.min ?? -d.half, max: d.max ?? d.half, value: d.min ?? 0 });
      const output = el("output", { for: id, class: "slider-value" });
      const slider = {
        name: d.name, input, touched: false,
        value: () => Number(input.value),
        show: () => { output.textContent = `${number(Number(input.value), 4)} ${d.unit}`; input.setAttribute("aria-valuetext", output.textContent); },
        center(v) {
          if (v === undefined || v === null) return;
          if (d.half) { input.min = Math.floor(v - d.half); input.max = Math.ceil(v + d.half); }
          input.value = v;
          slider.show();
        },
      };
      const before = old.get(d.name);
      if (before) { slider.center(before.value()); slider.touched = before.touched; }
      input.addEventListener("input", () => { slider.touched = true; slider.show(); schedulePreview(0); });
      slider.show();
      slider.row = el("div", { class: "slider" }, el("label", { for: id, text: `${d.label}` }), input, output);
      return slider;
    });
    sliderBox.replaceChildren(...sliders.map((s) => s.row));
  }

  let previewTimer = null;
  let previewBusy = false;
  let previewAgain = false;
  function schedulePreview(delay = 150) {
    if (!canvas) return;
    clearTimeout(previewTimer);
    previewTimer = setTimeout(runPreview, delay);
  }

  async function runPreview() {
    if (previewBusy) { previewAgain = true; return; }
    previewBusy = true;
    try {
      do { previewAgain = false; await previewOnce(); } while (previewAgain);
    } finally { previewBusy = false; }
  }

  function sliderOverrides() {
    return Object.fromEntries(sliders.filter((s) => s.touched).map((s) => [s.name, s.value()]));
  }

  async function previewOnce() {
    const mode = form.elements.mode.value;
    if (!PREVIEW_MODES.has(mode)) {
      previewStatus.textContent = `No fast preview for ${MODE_LABEL[mode] || mode}: STEM and HRTEM have one.`;
      previewStatus.dataset.state = "none";
      return;
    }
    let body;
    try { body = spec(sliderOverrides()); } catch (error) { return; }
    previewStatus.dataset.state = "loading";
    const started = performance.now();
    try {
      const p = await api("/api/v1/experiments/preview", { method: "POST", body: { spec: body } });
      draw(p.image, p.shape);
      const ms = performance.now() - started;
      previewStatus.textContent = `${p.approximation}; ${p.shape[0]}×${p.shape[1]} pixels of ${number(p.sampling[0], 3)} Å; ${ms.toFixed(0)} ms.`;
      const values = sliders.map((s) => `${s.name} ${number(s.value(), 4)}`).join(", ");
      canvas.setAttribute("aria-label", `Preview image (${MODE_LABEL[mode]}) at ${values}`);
      canvas.dataset.defocus = String(stateValue(p.state, "defocus"));
      previewStatus.dataset.state = "drawn";
    } catch (error) {
      previewStatus.textContent = `No preview: ${error.message}`;
      previewStatus.dataset.state = "error";
    }
  }

  // The image on the canvas, scaled from its minimum to its maximum (rows along x, as the
  // PNG results are drawn).
  function draw(image, shape) {
    const [nx, ny] = shape;
    canvas.width = nx;
    canvas.height = ny;
    let lo = Infinity;
    let hi = -Infinity;
    for (const row of image) for (const v of row) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const scale = hi > lo ? 255 / (hi - lo) : 0;
    const ctx = canvas.getContext("2d");
    const data = ctx.createImageData(nx, ny);
    for (let x = 0; x < nx; x++) {
      for (let y = 0; y < ny; y++) {
        const g = Math.round((image[x][y] - lo) * scale);
        const i = 4 * (y * nx + x);
        data.data[i] = data.data[i + 1] = data.data[i + 2] = g;
        data.data[i + 3] = 255;
      }
    }
    ctx.putImageData(data, 0, 0);
  }

  const applyButton = document.getElementById("preview-apply");
  applyButton && applyButton.addEventListener("click", () => {
    for (const s of sliders) {
      const input = form.querySelector(`[name="override.${s.name}"]`);
      if (input && s.touched) { input.value = s.value(); s.touched = false; }
    }
    changed();
  });

  // ---------------------------------------------------------------- the experiments
  const listBox = document.getElementById("experiment-list");
  const detail = document.getElementById("experiment-detail");
  const progress = document.getElementById("exp-progress");
  const stage = document.getElementById("exp-stage");
  const resultsBox = document.getElementById("results");
  let source = null;
  let current = null;

  function statusBadge(status) { return el("span", { class: `badge status-${status}`, text: status }); }

  async function loadList() {
    try {
      const items = await api("/api/v1/experiments?limit=50");
      if (!items.length) {
        listBox.replaceChildren(el("p", { class: "hint", text: "No experiments yet." }));
      } else {
        listBox.replaceChildren(window.bt.table(
          ["Created", "Experiment", "Instrument", "Mode", "Specimen", "Status", "Progress"],
          items.map((e) => [
            time(e.created_at),
            el("a", { href: `?job=${encodeURIComponent(e.id)}`, "data-job": e.id, onclick: (event) => { event.preventDefault(); select(e.id); } }, el("code", { text: e.id.slice(0, 16) + "…" })),
            e.instrument_id || "— (hypothetical)",
            MODE_LABEL[(e.spec.mode || {}).mode] || "",
            (e.spec.specimen || {}).name || (e.spec.specimen || {}).format || "",
            statusBadge(e.status),
            `${Math.round(100 * e.progress)} %`,
          ])));
        for (const row of listBox.querySelectorAll("tbody tr")) {
          const link = row.querySelector("a[data-job]");
          if (link && link.dataset.job === current) row.setAttribute("aria-current", "true");
        }
      }
      listBox.dataset.state = "ready";
      listBox.dataset.count = String(items.length);
    } catch (error) { failed(listBox, error); }
  }

  function showProgress(s) {
    progress.value = s.progress;
    progress.textContent = `${Math.round(100 * s.progress)} %`;
    stage.textContent = `${Math.round(100 * s.progress)} % · ${s.status}${s.stage ? " · " + s.stage : ""}`;
    detail.dataset.status = s.status;
    detail.dataset.progress = String(s.progress);
  }

  async function select(id) {
    current = id;
    history.replaceState(null, "", `?job=${encodeURIComponent(id)}`);
    if (source) { source.close(); source = null; }
    for (const row of listBox.querySelectorAll("tbody tr")) {
      const link = row.querySelector("a[data-job]");
      if (link && link.dataset.job === id) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    }
    detail.hidden = false;
    resultsBox.replaceChildren();
    resultsBox.dataset.state = "loading";
    document.getElementById("detail-id").textContent = id;
    try {
      const job = await api(`/api/v1/experiments/${encodeURIComponent(id)}`);
      if (current !== id) return;
      showJob(job);
      if (TERMINAL.has(job.status)) showResults(job);
      else follow(id);
    } catch (error) {
      failed(resultsBox, error);
    }
  }

  function showJob(job) {
    const facts = document.getElementById("detail-facts");
    const c = job.cost;
    facts.replaceChildren(
      el("dt", { text: "Status" }), el("dd", {}, statusBadge(job.status), job.error ? ` ${job.error}` : ""),
      el("dt", { text: "Instrument" }), el("dd", { text: job.instrument_id || "— (hypothetical microscope)" }),
      el("dt", { text: "By" }), el("dd", { text: job.owner }),
      el("dt", { text: "Submitted" }), el("dd", { text: time(job.created_at) }),
      el("dt", { text: "Finished" }), el("dd", { text: time(job.finished_at) }),
      el("dt", { text: "Estimate" }), el("dd", { text: c ? describeCost(c) : "—" }));
    showProgress(job);
    const actions = document.getElementById("detail-actions");
    actions.replaceChildren();
    if (canOperate && !TERMINAL.has(job.status)) {
      actions.append(el("button", { type: "button", id: "cancel-experiment", text: "Cancel the experiment", onclick: async (event) => {
        event.target.disabled = true;
        try { await api(`/api/v1/experiments/${encodeURIComponent(job.id)}`, { method: "DELETE" }); } catch (error) {
          actions.append(el("span", { class: "error", text: ` Not cancelled: ${error.message}` }));
        }
      } }));
    }
  }

  // Progress from the server-sent events until the experiment ends.
  function follow(id) {
    source = new EventSource(`/api/v1/experiments/${encodeURIComponent(id)}/events?interval=0.5`);
    source.addEventListener("progress", (event) => { if (current === id) showProgress(JSON.parse(event.data)); });
    source.addEventListener("end", async (event) => {
      const s = JSON.parse(event.data);
      source.close();
      source = null;
      if (current !== id) return;
      showProgress(s);
      if (!TERMINAL.has(s.status)) { follow(id); return; } // the stream's own end, not the job's
      const job = await api(`/api/v1/experiments/${encodeURIComponent(id)}`);
      if (current !== id) return;
      showJob(job);
      showResults(job);
      loadList();
    });
  }

  // A float64 NPY file's values (little-endian, C order).
  function npyValues(buffer) {
    const bytes = new Uint8Array(buffer);
    const view = new DataView(buffer);
    const major = bytes[6];
    const length = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
    const start = major === 1 ? 10 : 12;
    const header = new TextDecoder().decode(bytes.subarray(start, start + length));
    if (!header.includes("'<f8'")) throw new Error("not a float64 array");
    return new Float64Array(buffer.slice(start + length));
  }

  const resultUrl = (job, name, format) => `/api/v1/experiments/${encodeURIComponent(job.id)}/results/${encodeURIComponent(name)}?format=${format}`;

  function showResults(job) {
    resultsBox.replaceChildren();
    if (job.status !== "succeeded") {
      resultsBox.append(el("p", { class: job.status === "failed" ? "error" : "hint",
        text: job.status === "failed" ? `Failed: ${job.error || "no reason given"}` : "Cancelled: no results." }));
      resultsBox.dataset.state = "ready";
      return;
    }
    const byName = new Map(job.results.map((r) => [r.name, r]));
    const images = job.results.filter((r) => r.shape.length === 2 && !/_(std|dose\d+)$/.test(r.name)).map((r) => r.name);
    if (!images.length) {
      resultsBox.append(el("p", { class: "hint", text: "No images among the results (download the NeXus file)." }));
    } else {
      const choose = el("select", { id: "result-name", "aria-label": "Result image" }, images.map((n) => el("option", { value: n, text: n })));
      const view = el("div", { class: "result-view" });
      choose.addEventListener("change", () => showImage(job, byName, choose.value, view));
      resultsBox.append(el("div", { class: "toolbar" }, el("label", { for: "result-name", text: "Image " }), choose), view);
      showImage(job, byName, images[0], view);
    }
    resultsBox.append(el("p", { class: "exports" }, "Download: ",
      el("a", { href: `/api/v1/experiments/${encodeURIComponent(job.id)}/report`, download: true, text: "report (HTML)" }), " · ",
      byName.has("result.nxs") ? el("a", { href: resultUrl(job, "result.nxs", "nexus"), download: true, text: "all results (NeXus)" }) : null));
    resultsBox.dataset.state = "ready";
  }

  function figure(id, src, alt, caption) {
    const img = el("img", { id, alt, class: "result-image" });
    img.addEventListener("load", () => { img.dataset.loaded = "true"; });
    img.src = src;
    return el("figure", {}, img, el("figcaption", {}, caption));
  }

  function showImage(job, byName, name, view) {
    const doses = (job.spec.doses || []);
    // The realised doses, lowest first, then the noise-free image.
    const steps = [];
    for (let i = 0; byName.has(`${name}_dose${i}`); i++) {
      steps.push({ name: `${name}_dose${i}`, dose: doses[i], label: doses[i] !== undefined ? `${number(doses[i], 4)} e/Å²` : "the state's dose" });
    }
    steps.sort((a, b) => (a.dose ?? 0) - (b.dose ?? 0));
    steps.push({ name, label: "noise-free" });
    const slider = el("input", { id: "dose", type: "range", min: 0, max: steps.length - 1, step: 1, value: steps.length - 1 });
    const output = el("output", { for: "dose", id: "dose-value" });
    const main = el("div", {});
    const pick = () => {
      const s = steps[Number(slider.value)];
      output.textContent = s.label;
      slider.setAttribute("aria-valuetext", s.label);
      main.replaceChildren(figure("result-image", resultUrl(job, s.name, "png"), `${name} at ${s.label}`,
        [`${name}, ${s.label} `, el("a", { href: resultUrl(job, s.name, "npy"), download: true, text: "(NPY)" })]));
      main.dataset.result = s.name;
    };
    slider.addEventListener("input", pick);
    pick();
    const parts = [el("div", { class: "slider" }, el("label", { for: "dose", text: "Dose" }), slider, output)];
    const figures = el("div", { class: "figures" }, main);
    const std = byName.get(`${name}_std`);
    if (std) {
      const members = job.cost ? job.cost.members : null;
      const range = el("span", { id: "std-range" });
      figures.append(figure("result-std", resultUrl(job, std.name, "png"), `Standard deviation of ${name} over the ensemble`,
        [`Ensemble standard deviation${members ? ` (${members} members)` : ""}, black to white: `, range]));
      if (std.size_bytes <= 8 * 2 ** 20) {
        fetch(resultUrl(job, std.name, "npy"), { credentials: "same-origin" })
          .then((r) => r.arrayBuffer()).then((buffer) => {
            const values = npyValues(buffer);
            let lo = Infinity; let hi = -Infinity; let sum = 0;
            for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v); sum += v; }
            range.textContent = `${number(lo, 3)} to ${number(hi, 3)} (mean ${number(sum / values.length, 3)}) in the image's units`;
            range.dataset.max = String(hi);
          }).catch(() => { range.textContent = "its minimum to its maximum"; });
      } else range.textContent = "its minimum to its maximum";
    } else {
      figures.append(el("p", { class: "hint", text: "A single state: no ensemble standard deviation (set an ensemble size above 1)." }));
    }
    view.replaceChildren(...parts, figures);
  }

  // ---------------------------------------------------------------- start
  loadList().then(() => {
    const job = new URLSearchParams(location.search).get("job");
    if (job) select(job);
  });
  if (form && canOperate) {
    buildForm().then(() => { buildSliders(); estimate(); }).catch((error) => failed(form, error));
  }
})();
