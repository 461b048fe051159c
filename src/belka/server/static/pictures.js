// The pictures page: style transfer and feature visualisation as background jobs, with
// progress, a preview while they run, and cancel. Uses app.js's helpers ($, api, showError).
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  let current = null;  // the running job's id

  function fields(form, values) {
    for (const [k, v] of Object.entries(values)) if (v !== "" && v != null) form.append(k, v);
    return form;
  }

  async function start(path, form, title) {
    showError("");
    if (current) { showError("A picture is being made; cancel it first."); return; }
    const { ok, body } = await api(path, { method: "POST", body: form });
    if (!ok) { showError(body ? body.detail : "The request failed."); return; }
    current = body.id;
    $("#picture-job").hidden = false;
    $("#job-title").textContent = title;
    $("#job-cancel").disabled = false;
    $("#job-cancel").hidden = false;
    $("#job-caption").textContent = "";
    $("#job-picture").removeAttribute("src");
    watch(body.id, body.preview_url);
  }

  async function watch(id, previewUrl) {
    let shown = -1;
    for (;;) {
      await new Promise((r) => setTimeout(r, 700));
      const { ok, body } = await api(`/api/v1/jobs/${id}`);
      if (!ok) { showError(body ? body.detail : "Lost the job."); break; }
      const bar = $("#job-progress");
      bar.max = Math.max(1, body.total);
      bar.value = body.done;
      $("#job-status").textContent = `${body.status}: step ${body.done} of ${body.total}`;
      if (body.done !== shown && body.done > 0 && body.status === "running") {
        shown = body.done;
        $("#job-picture").src = `${previewUrl}?step=${body.done}`;
      }
      if (body.status === "done") {
        const result = (await api(body.result_url)).body;
        $("#job-picture").src = result.url;
        $("#job-caption").textContent = describe(result);
        $("#job-title").textContent = "Done";
        $("#job-status").textContent = `done: ${body.total} steps`;
        break;
      }
      if (body.status === "failed" || body.status === "cancelled") {
        if (body.status === "failed") showError(body.error || "The job failed.");
        $("#job-title").textContent = body.status === "failed" ? "Failed" : "Cancelled";
        $("#job-status").textContent = body.status === "cancelled"
          ? `cancelled at step ${body.done} of ${body.total}` : body.status;
        break;
      }
    }
    current = null;
    $("#job-cancel").disabled = true;
    $("#job-cancel").hidden = true;
  }

  function describe(r) {
    if (r.style_gain !== undefined) {
      return `${r.width} × ${r.height} px: style loss ${r.style_gain.toFixed(1)}× lower than the photo's, ` +
        `content cosine ${r.content_cosine.toFixed(2)}, ${r.steps} steps in ${r.seconds.toFixed(1)} s`;
    }
    const values = r.values.slice(0, 4).map((v) => v.toFixed(2)).join(", ");
    return `${r.description}: ${r.count} picture(s), objective ${values}${r.values.length > 4 ? " …" : ""}, ` +
      `${r.steps} steps in ${r.seconds.toFixed(1)} s`;
  }

  $("#job-cancel").addEventListener("click", async () => {
    if (!current) return;
    $("#job-cancel").disabled = true;
    await api(`/api/v1/jobs/${current}`, { method: "DELETE" });
  });

  $("#style-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const content = $("#style-content").files[0], style = $("#style-style").files[0];
    const pattern = $("#style-pattern").value;
    if (!content || (!style && !pattern)) { showError("Pick a content photo and a style picture (or a built-in style)."); return; }
    const form = new FormData();
    form.append("content", content);
    if (pattern) form.append("pattern", pattern); else form.append("style", style);
    fields(form, { size: $("#style-size").value, steps: $("#style-steps").value,
                   style_weight: $("#style-weight").value, seed: $("#style-seed").value });
    start("/api/v1/style", form, "Painting…");
  });

  $("#visualize-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const klass = $("#vis-class").value.trim(), grid = $("#vis-channels").value.trim();
    const values = { size: $("#vis-size").value, steps: $("#vis-steps").value,
                     diversity: $("#vis-diversity").value, seed: $("#vis-seed").value };
    if (klass) values.class = klass;
    else {
      values.layer = $("#vis-layer").value;
      if (grid) values.channels = grid; else values.channel = $("#vis-channel").value;
    }
    start("/api/v1/visualize", fields(new FormData(), values), "Visualizing…");
  });
});
