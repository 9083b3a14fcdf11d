// The Audit page: report links for a granted instrument and period, the latest signed
// checkpoint, and the verification of the whole log (auditors and admins).
"use strict";
(function () {
  const { api, el, time, failed } = window.bt;
  const form = document.getElementById("report-form");
  if (form) {
    const today = new Date();
    const weekAgo = new Date(today.getTime() - 7 * 86400e3);
    form.start.value = weekAgo.toISOString().slice(0, 10);
    form.end.value = today.toISOString().slice(0, 10);
    const links = document.getElementById("report-links");
    const update = () => {
      if (!form.instrument.value || !form.start.value || !form.end.value) { links.replaceChildren(); return; }
      const q = `start=${form.start.value}T00:00:00Z&end=${form.end.value}T00:00:00Z`;
      const href = (fmt) => `/api/v1/reports/instruments/${encodeURIComponent(form.instrument.value)}?${q}&format=${fmt}`;
      links.replaceChildren("Download: ", el("a", { href: href("pdf"), download: true, text: "PDF" }), " · ",
        el("a", { href: href("html"), download: true, text: "HTML" }), " · ", el("a", { href: href("json"), download: true, text: "JSON" }));
    };
    form.addEventListener("change", update);
    api("/api/v1/instruments").then((instruments) => {
      for (const i of instruments) form.instrument.append(el("option", { value: i.id, text: i.id }));
      update();
    }).catch(() => {});
  }

  const box = document.getElementById("checkpoint");
  if (box) {
    api("/api/v1/audit/checkpoint").then((cp) => {
      box.replaceChildren(el("dl", { class: "facts" },
        el("dt", { text: "Entries" }), el("dd", { text: String(cp.tree_size) }),
        el("dt", { text: "Root hash" }), el("dd", {}, el("code", { class: "clip", text: cp.root_hash })),
        el("dt", { text: "Signed" }), el("dd", { text: time(cp.created_at) }),
        el("dt", { text: "Origin" }), el("dd", { text: cp.origin })));
      box.dataset.state = "ready";
    }).catch((error) => failed(box, error));
    const result = document.getElementById("verify-result");
    document.getElementById("verify").addEventListener("click", async (event) => {
      event.target.disabled = true;
      result.textContent = "Verifying…";
      try {
        const r = await api("/ui/audit/verify", { method: "POST" });
        result.replaceChildren(el("p", { class: r.verified ? "ok" : "error",
          text: r.verified ? `Verified: ${r.entries} entries, ${r.checkpoints} checkpoints (${r.seconds} s).`
            : `NOT verified: ${r.findings} finding(s) in ${r.entries} entries.` }),
        r.detail && r.detail.length ? el("ul", {}, r.detail.map((f) => el("li", { text: f }))) : null);
        result.dataset.verified = String(r.verified);
      } catch (error) { failed(result, error); }
      event.target.disabled = false;
    });
  }
})();
