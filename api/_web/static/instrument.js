// The Instrument page: a telemetry explorer (uPlot, one chart per chosen channel on one time
// axis; the server picks raw samples or a rollup for the range: bucket=auto), flags on the
// time axis, stretches without samples shaded, the flags in view and the calibrations; and,
// asked for a channel, its Bayesian forecast (the forecast route; a job while it fits) drawn
// ahead of the data as uPlot bands: 5-95 % and 25-75 % with the median.
"use strict";
(function () {
  const { api, el, table, number, time, failed } = window.bt;
  const root = document.getElementById("explorer");
  const id = root.dataset.instrument;
  const base = `/api/v1/instruments/${encodeURIComponent(id)}`;
  const charts = document.getElementById("charts");
  const list = document.getElementById("channel-list");
  const filter = document.getElementById("channel-filter");
  const label = document.getElementById("range-label");
  const params = new URLSearchParams(location.search);
  const PREFERRED = ["gun.high_tension", "objective.lens_current", "holder.temperature", "stage.x"];
  const MIN_SPAN = 60e3; // ms
  const MAX_SPAN = 400 * 86400e3;

  let channels = [];
  let chosen = [];
  let range = null; // [start, end] in ms
  let serial = 0;   // each load's number: a late answer of an earlier load is dropped
  let plots = [];
  let view = { flags: [], gaps: [] };
  const forecasts = new Map(); // channel -> the forecast route's answer (200)
  const QUANTILES = ["0.05", "0.25", "0.5", "0.75", "0.95"];

  function setUrl() {
    const q = new URLSearchParams({ channels: chosen.join(","), start: new Date(range[0]).toISOString(), end: new Date(range[1]).toISOString() });
    history.replaceState(null, "", `${location.pathname}?${q}`);
  }

  function widthPx() { return Math.max(320, charts.clientWidth - 8); }

  // Stretches without a point: wider than three buckets (rollups) or a minute and ten sample
  // spacings (raw samples); also before the first and after the last point of the range.
  function gapsOf(xs, bucketS) {
    const out = [];
    if (!xs.length) return [[range[0] / 1000, range[1] / 1000]];
    let threshold = bucketS ? 3 * bucketS : 60;
    if (!bucketS && xs.length > 2) {
      const d = [];
      for (let i = 1; i < xs.length; i++) d.push(xs[i] - xs[i - 1]);
      d.sort((a, b) => a - b);
      threshold = Math.max(60, 10 * d[d.length >> 1]);
    }
    if (xs[0] - range[0] / 1000 > threshold) out.push([range[0] / 1000, xs[0]]);
    for (let i = 1; i < xs.length; i++) if (xs[i] - xs[i - 1] > threshold) out.push([xs[i - 1], xs[i]]);
    const last = Math.min(range[1], Date.now()) / 1000;
    if (last - xs[xs.length - 1] > threshold) out.push([xs[xs.length - 1], last]);
    return out;
  }

  function overlay(gaps) {
    return (u) => {
      const { ctx } = u;
      const { left, top, width, height } = u.bbox;
      ctx.save();
      ctx.beginPath(); ctx.rect(left, top, width, height); ctx.clip();
      ctx.fillStyle = "rgba(120,120,120,0.18)";
      for (const [a, b] of gaps) {
        const x0 = u.valToPos(a, "x", true), x1 = u.valToPos(b, "x", true);
        ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
      }
      const flagX = [];
      for (const f of view.flags) {
        const t0 = Date.parse(f.time) / 1000;
        const t1 = f.end_time ? Date.parse(f.end_time) / 1000 : t0;
        const x0 = u.valToPos(t0, "x", true), x1 = u.valToPos(t1, "x", true);
        const rgb = f.severity === "critical" ? "190,20,20" : "200,110,0";
        if (x1 - x0 > 2) { ctx.fillStyle = `rgba(${rgb},0.15)`; ctx.fillRect(x0, top, x1 - x0, height); }
        ctx.fillStyle = `rgba(${rgb},0.9)`;
        ctx.fillRect(x0 - 1, top, 2, height);
        ctx.beginPath(); ctx.moveTo(x0 - 5, top); ctx.lineTo(x0 + 5, top); ctx.lineTo(x0, top + 8); ctx.fill();
        if (x0 >= left && x0 <= left + width) flagX.push(x0.toFixed(1));
      }
      ctx.restore();
      // Where the flags are drawn (canvas pixels), for the tests and the curious.
      u.root.parentNode.dataset.flagX = flagX.join(",");
    };
  }

  // Tick labels with as many digits as the tick spacing needs (a 200 kV high tension that
  // varies by 0.5 V shows 200000.0, 200000.5, ...).
  function tickLabels(u, vals) {
    const inc = vals.length > 1 ? Math.abs(vals[1] - vals[0]) : Math.abs(vals[0] || 1);
    const top = Math.max(...vals.map((v) => Math.abs(v)));
    if (top >= 1e6 || (top > 0 && top < 1e-3)) {
      const digits = Math.min(12, Math.max(1, Math.ceil(Math.log10(top / (inc || top))) + 1));
      return vals.map((v) => v.toExponential(digits - 1));
    }
    const decimals = Math.min(10, Math.max(0, -Math.floor(Math.log10(inc || 1))));
    return vals.map((v) => v.toFixed(decimals));
  }

  // The data's columns and, when the channel has a forecast, the forecast's quantiles at its
  // horizons, on one sorted x column (each side null where the other has its points).
  function columns(series, fc) {
    const rows = series.points.map((p) => [Date.parse(p.time) / 1000, p.mean, p.min, p.max, null, null, null, null, null]);
    if (fc) for (const h of fc.horizons) rows.push([Date.parse(h.at) / 1000, null, null, null, ...QUANTILES.map((q) => h.quantiles[q])]);
    rows.sort((a, b) => a[0] - b[0]);
    return rows[0] ? rows[0].map((_, i) => rows.map((r) => r[i])) : [[], [], [], [], [], [], [], [], []];
  }

  function forecastCaption(fc) {
    const parts = [`forecast from ${time(fc.origin)}: 5–95 % and 25–75 % bands, median dashed`];
    if (fc.tolerance !== null && fc.tolerance !== undefined && fc.probability_within !== null && fc.probability_within !== undefined) {
      parts.push(`P(within ±${number(fc.tolerance)} ${fc.unit} for ${number(fc.duration_s / 60)} min) = ${number(fc.probability_within, 3)}`);
    }
    return parts.join(" · ");
  }

  function chart(series, bucketS, height) {
    const fc = forecasts.get(series.channel) || null;
    const data = columns(series, fc);
    const xs = series.points.map((p) => Date.parse(p.time) / 1000);
    const gaps = gapsOf(xs, bucketS);
    view.gaps.push(...gaps);
    const box = el("figure", { class: "chart", "data-channel": series.channel },
      el("figcaption", {}, el("strong", { text: series.channel }), ` [${series.unit}]`,
        fc ? el("span", { class: "fc-caption", text: ` · ${forecastCaption(fc)}` }) : null));
    charts.append(box);
    // With a forecast from within the range, the time axis reaches its last horizon.
    const reach = fc && range[1] >= Date.parse(fc.origin) ? Date.parse(fc.horizons[fc.horizons.length - 1].at) : 0;
    const until = Math.max(range[1], reach) / 1000;
    const fcStroke = "rgba(150,60,170,0.55)";
    const opts = {
      width: widthPx(), height,
      cursor: { sync: { key: `bt-${id}` }, drag: { x: true, y: false, setScale: false } },
      scales: { x: { time: true, min: range[0] / 1000, max: until } },
      legend: { show: false },
      axes: [{ stroke: "#333" }, { stroke: "#333", size: 84, values: tickLabels }],
      series: [
        {},
        { label: "mean", stroke: "#1f5fa8", width: 1.5, spanGaps: false },
        { label: "min", stroke: "rgba(31,95,168,0.25)", width: 0.5, spanGaps: false },
        { label: "max", stroke: "rgba(31,95,168,0.25)", width: 0.5, spanGaps: false },
        { label: "forecast 5 %", stroke: fcStroke, width: 0.5, spanGaps: true, show: !!fc },
        { label: "forecast 25 %", stroke: fcStroke, width: 0.5, spanGaps: true, show: !!fc },
        { label: "forecast median", stroke: "rgb(150,60,170)", width: 1.5, dash: [6, 4], spanGaps: true, show: !!fc },
        { label: "forecast 75 %", stroke: fcStroke, width: 0.5, spanGaps: true, show: !!fc },
        { label: "forecast 95 %", stroke: fcStroke, width: 0.5, spanGaps: true, show: !!fc },
      ],
      bands: [
        { series: [3, 2], fill: "rgba(31,95,168,0.12)" },
        { series: [8, 4], fill: "rgba(150,60,170,0.15)" },
        { series: [7, 5], fill: "rgba(150,60,170,0.25)" },
      ],
      hooks: {
        draw: [overlay(gaps)],
        setSelect: [(u) => {
          if (u.select.width < 4) return;
          const a = u.posToVal(u.select.left, "x") * 1000, b = u.posToVal(u.select.left + u.select.width, "x") * 1000;
          u.setSelect({ width: 0, height: 0 }, false);
          setRange(a, b);
        }],
      },
    };
    const plot = new uPlot(opts, data, box);
    plot.root.setAttribute("role", "img");
    plot.root.setAttribute("aria-label", `${series.channel}, ${series.points.length} points`
      + (fc ? `, ${forecastCaption(fc)}` : ""));
    box.plot = plot; // the chart's uPlot, for the tests and the curious
    if (fc) box.dataset.forecast = fc.job_id;
    return plot;
  }

  function rangeLabel(result) {
    const res = result.level === "raw" && result.bucket_s === null ? "raw samples"
      : result.level === "raw" ? `${number(result.bucket_s, 3)} s buckets of raw samples`
      : `${result.bucket_s >= 3600 ? result.bucket_s / 3600 + " h" : result.bucket_s / 60 + " min"} buckets from the ${result.level} rollup`;
    label.textContent = `${time(new Date(range[0]).toISOString())} – ${time(new Date(range[1]).toISOString())} · ${res}`;
  }

  async function load() {
    const mine = ++serial;
    setUrl();
    charts.dataset.state = "loading";
    charts.setAttribute("aria-busy", "true");
    const start = new Date(range[0]).toISOString(), end = new Date(range[1]).toISOString();
    const q = new URLSearchParams({ start, end, bucket: "auto", max_points: String(Math.min(2000, widthPx())) });
    if (chosen.length) q.set("channels", chosen.join(","));
    try {
      const [result, flags] = await Promise.all([
        chosen.length ? api(`${base}/telemetry?${q}`) : Promise.resolve({ series: [], level: "raw", bucket_s: null }),
        api(`${base}/flags?start=${encodeURIComponent(start)}&end=${encodeURIComponent(end)}`),
      ]);
      if (mine !== serial) return;
      for (const p of plots) p.destroy();
      charts.replaceChildren();
      view = { flags, gaps: [] };
      const height = chosen.length > 3 ? 140 : 200;
      plots = result.series.map((s) => chart(s, result.bucket_s, height));
      if (!plots.length) charts.append(el("p", { class: "hint", text: "Choose channels to plot." }));
      rangeLabel(result);
      forecastChannels();
      showFlags(flags);
      charts.dataset.gaps = String(view.gaps.length);
      charts.dataset.flags = String(flags.length);
      charts.dataset.serial = String(mine);
      charts.dataset.state = "drawn";
      charts.removeAttribute("aria-busy");
    } catch (error) {
      if (mine === serial) failed(charts, error);
    }
  }

  function showFlags(flags) {
    const box = document.getElementById("flags");
    if (!flags.length) { box.replaceChildren(el("p", { class: "ok", text: "No flags in this range." })); return; }
    box.replaceChildren(table(["Time", "Kind", "Severity", "Quantity", "Channel", "Observed", "Expected", "Open"],
      flags.slice(-200).reverse().map((f) => [time(f.time), f.kind, el("span", { class: `badge sev-${f.severity}`, text: f.severity }),
        f.quantity || "—", f.channel || "—", number(f.observed), number(f.expected), f.end_time ? "closed" : "open"])));
    box.querySelector("table").classList.add("flag-table");
  }

  function setRange(a, b) {
    let span = Math.min(MAX_SPAN, Math.max(MIN_SPAN, b - a));
    const mid = (a + b) / 2;
    range = [Math.round(mid - span / 2), Math.round(mid + span / 2)];
    load();
  }

  function zoom(factor) { setRange((range[0] + range[1]) / 2 - (range[1] - range[0]) * factor / 2, (range[0] + range[1]) / 2 + (range[1] - range[0]) * factor / 2); }
  function pan(fraction) { const d = (range[1] - range[0]) * fraction; setRange(range[0] + d, range[1] + d); }

  function renderChannels() {
    const needle = filter.value.trim().toLowerCase();
    list.replaceChildren(...channels.filter((c) => !needle || c.name.toLowerCase().includes(needle)).map((c) => {
      const box = el("input", { type: "checkbox", id: `ch-${c.name}`, value: c.name, checked: chosen.includes(c.name) });
      box.addEventListener("change", () => {
        chosen = box.checked ? chosen.concat([c.name]) : chosen.filter((n) => n !== c.name);
        load();
      });
      return el("div", { class: "channel" }, box, el("label", { for: `ch-${c.name}`, text: `${c.name} [${c.unit}]` }));
    }));
  }

  // ------------------------------------------------------------------ forecasts
  const fcForm = document.getElementById("forecast-form");
  const fcChannel = document.getElementById("fc-channel");
  const fcStatus = document.getElementById("fc-status");
  let fcSerial = 0;

  function forecastChannels() {
    const was = fcChannel.value;
    fcChannel.replaceChildren(...chosen.map((n) => el("option", { value: n, text: n, selected: n === was })));
    tolUnit();
  }

  // The tolerance is in the channel's unit: its label says which.
  function tolUnit() {
    const c = channels.find((ch) => ch.name === fcChannel.value);
    document.getElementById("fc-tolerance-unit").textContent = c ? c.unit : "unit";
  }
  fcChannel.addEventListener("change", tolUnit);

  function say(state, text, cls) {
    fcStatus.dataset.state = state;
    fcStatus.className = `forecast-status ${cls || ""}`;
    fcStatus.textContent = text;
  }

  function wait(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  // GET the forecast route (no CSRF: a read; an operator's or admin's first ask queues the
  // job), then, while it answers 202, poll the job until it ended and ask again for the result.
  async function askForecast() {
    const mine = ++fcSerial;
    const quantity = fcChannel.value;
    if (!quantity) { say("error", "Choose a channel to forecast.", "error"); return; }
    const horizon = Number(document.getElementById("fc-horizon").value);
    const tolerance = document.getElementById("fc-tolerance").value.trim();
    const windowMin = Number(document.getElementById("fc-window").value);
    const q = new URLSearchParams({ quantity, duration: String(horizon), window: String(windowMin) });
    // Twelve steps to the horizon, and one at a sixtieth of it: the band starts near the data.
    for (const k of [1 / 60, ...Array.from({ length: 12 }, (_, i) => (i + 1) / 12)]) q.append("horizon", String(Number((horizon * k).toPrecision(6))));
    if (tolerance) q.set("tolerance", tolerance);
    const url = `${base}/forecast?${q}`;
    fcForm.setAttribute("aria-busy", "true");
    try {
      say("asking", `Asking for a forecast of ${quantity}…`);
      let answer = await api(url);
      while (!answer.horizons) {
        const poll = `/api/v1/jobs/${encodeURIComponent(answer.job_id)}`;
        fcStatus.dataset.job = answer.job_id;
        let job = answer;
        while (!["succeeded", "failed", "cancelled"].includes(job.status)) {
          const pct = job.progress ? ` ${Math.round(job.progress * 100)} %` : "";
          say("fitting", `fitting… (job ${answer.job_id}: ${job.status}${job.stage ? `, ${job.stage}` : ""}${pct})`);
          await wait(1000);
          if (mine !== fcSerial) return;
          job = await api(poll);
        }
        if (job.status === "cancelled") throw new Error(`its job ${answer.job_id} was cancelled`);
        answer = await api(url); // the result (200), or why it failed (422)
      }
      if (mine !== fcSerial) return;
      forecasts.set(quantity, answer);
      fcStatus.dataset.job = answer.job_id;
      if (!chosen.includes(quantity)) chosen = chosen.concat([quantity]);
      await load();
      say("drawn", `Forecast of ${quantity} (${answer.window.points} points from ${time(answer.window.start)} to ${time(answer.window.end)}): ${forecastCaption(answer)}.`, "ok");
    } catch (error) {
      if (mine !== fcSerial) return;
      if (error.status === 403) say("refused", `No forecast of ${quantity} for these data yet: ${error.message}.`, "hint");
      else say("error", `No forecast: ${error.message}`, "error");
    } finally {
      if (mine === fcSerial) fcForm.removeAttribute("aria-busy");
    }
  }

  fcForm.addEventListener("submit", (event) => { event.preventDefault(); askForecast(); });

  async function calibrations() {
    const box = document.getElementById("calibrations");
    try {
      const cals = await api(`${base}/calibrations`);
      if (!cals.length) { box.replaceChildren(el("p", { class: "hint", text: "No calibration recorded." })); return; }
      const now = Date.now();
      const inForce = cals.filter((c) => Date.parse(c.valid_from) <= now).pop();
      box.replaceChildren(table(["Version", "In force from", "", "Body"], cals.slice().reverse().map((c) => [
        c.version, time(c.valid_from), c === inForce ? el("span", { class: "badge verdict-consistent", text: "in force" }) : "",
        el("code", { class: "clip", text: JSON.stringify(c.body) })])));
    } catch (error) { failed(box, error); }
  }

  async function start() {
    try {
      const [chans, state] = await Promise.all([api(`${base}/channels`), api(`${base}/state`)]);
      channels = chans;
      const names = new Set(chans.map((c) => c.name));
      const asked = (params.get("channels") || "").split(",").filter((n) => names.has(n));
      chosen = asked.length ? asked : PREFERRED.filter((n) => names.has(n)).slice(0, 3);
      if (!chosen.length) chosen = chans.slice(0, 3).map((c) => c.name);
      // The range ends at the newest sample (or now): old data opens where it is.
      const newest = state.channels.reduce((m, v) => Math.max(m, Date.parse(v.source_time)), 0);
      const end = params.get("end") ? Date.parse(params.get("end")) : (newest ? Math.min(Date.now(), newest + 60e3) : Date.now());
      const begin = params.get("start") ? Date.parse(params.get("start")) : end - Number(params.get("span") || 3600) * 1000;
      range = [begin, end];
      renderChannels();
      await load();
    } catch (error) { failed(charts, error); }
  }

  filter.addEventListener("input", renderChannels);
  for (const b of document.querySelectorAll("[data-span]")) b.addEventListener("click", () => {
    const end = range[1];
    range = [end - Number(b.dataset.span) * 1000, end];
    load();
  });
  document.getElementById("zoom-in").addEventListener("click", () => zoom(0.5));
  document.getElementById("zoom-out").addEventListener("click", () => zoom(2));
  document.getElementById("pan-left").addEventListener("click", () => pan(-0.5));
  document.getElementById("pan-right").addEventListener("click", () => pan(0.5));
  let resizing = null;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(() => range && load(), 250); });
  start();
  calibrations();
})();
