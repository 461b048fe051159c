// The lab page: kernels, CSS transforms, PCA slider, gradient descent. Uses app.js's helpers.
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  const photo = () => document.getElementById("lab-file").files[0];
  const needPhoto = () => { if (!photo()) { showError("Pick a photo first."); return false; } return true; };

  $("#kernel-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    if (!needPhoto()) return;
    const kernel = $("#kernel").value === "custom" ? $("#kernel-custom").value : $("#kernel").value;
    const { ok, body } = await api("/api/v1/lab/filter", {
      method: "POST",
      body: formWith(photo(), { kernel, padding: $("#padding").value, gray: $("#gray").checked }),
    });
    if (!ok) { showError(body ? body.detail : "Filter failed."); return; }
    $("#kernel-out").src = body.url;
    $("#kernel-caption").textContent = kernelCaption(body.kernel);
  });

  $("#transform-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    if (!needPhoto()) return;
    const css = $("#css").value;
    const { ok, body } = await api("/api/v1/lab/transform", {
      method: "POST", body: formWith(photo(), { css }),
    });
    if (!ok) { showError(body ? body.detail : "Transform failed."); return; }
    $("#dommatrix").textContent = body.dommatrix;
    $("#warp-out").src = body.url;
    const box = $("#browser-box");
    box.style.width = `${body.width}px`;
    box.style.height = `${body.height}px`;
    const img = $("#browser-img");
    img.src = body.source_url;
    img.style.width = `${body.width}px`;
    img.style.height = `${body.height}px`;
    img.style.transform = css;
  });

  let pcaReady = false;
  async function reconstruct() {
    if (!pcaReady) return;
    const k = $("#pca-k").value;
    $("#k-value").textContent = k;
    const { ok, body } = await api(`/api/v1/lab/pca/reconstruct?upload_id=${$("#pca-id").value}&k=${k}`);
    if (!ok) { showError(body ? body.detail : "Reconstruction failed."); return; }
    $("#pca-out").src = body.url;
    $("#pca-caption").textContent = `rebuilt from ${body.k} numbers`;
  }
  $("#pca-k").addEventListener("input", reconstruct);
  $("#pca-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    const started = await api("/api/v1/lab/pca", { method: "POST", body: new FormData() });
    if (!started.ok) { showError(started.body ? started.body.detail : "PCA failed."); return; }
    $("#pca-caption").textContent = "fitting…";
    for (;;) {
      await new Promise((r) => setTimeout(r, 300));
      const { body } = await api(`/api/v1/jobs/${started.body.id}`);
      if (body.status === "done") {
        const result = (await api(body.result_url)).body;
        $("#pca-k").max = result.k;
        $("#pca-k").disabled = false;
        pcaReady = true;
        reconstruct();
        break;
      }
      if (body.status === "failed" || body.status === "cancelled") { showError(body.error || "Cancelled."); break; }
    }
  });

  $("#learn-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    const fields = { x: $("#learn-x").value, y: $("#learn-y").value, lr: $("#learn-lr").value, steps: 300 };
    const form = new FormData();
    for (const [k, v] of Object.entries(fields)) form.append(k, v);
    const { ok, body } = await api("/api/v1/lab/learn", { method: "POST", body: form });
    if (!ok) { showError(body ? body.detail : "Training failed."); return; }
    animate(body);
  });

  // Edge detectors (sobel, prewitt, scharr) are two kernels, x and y, combined as the gradient's
  // length; the others are one matrix.
  function kernelCaption(kernel) {
    const rows = (m) => JSON.stringify(m.map((r) => r.map((v) => +Number(v).toFixed(4))));
    const pair = Array.isArray(kernel[0][0]);
    return pair ? `kernels x ${rows(kernel[0])} and y ${rows(kernel[1])}, combined as sqrt(x² + y²)`
      : `kernel ${rows(kernel)}`;
  }

  // Gradient descent on the MSE is stable while lr < 2 / (the largest eigenvalue of the loss's
  // curvature, 2/n [[Σx², Σx], [Σx, n]]).
  function stableRate(xs) {
    const n = xs.length, sx = xs.reduce((a, v) => a + v, 0), sxx = xs.reduce((a, v) => a + v * v, 0);
    const a = (2 / n) * sxx, d = 2, b = (2 / n) * sx;
    const largest = (a + d) / 2 + Math.sqrt(((a - d) / 2) ** 2 + b * b);
    return 2 / largest;
  }

  const num = (v, digits = 4) => (v === null || v === undefined ? "∞" : v.toFixed(digits));

  function animate(fit) {
    const canvas = $("#learn-canvas");
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, half = W / 2;
    const xs = fit.x, ys = fit.y;
    const xmin = Math.min(...xs) - 1, xmax = Math.max(...xs) + 1;
    const ymin = Math.min(...ys) - 2, ymax = Math.max(...ys) + 2;
    const px = (x) => ((x - xmin) / (xmax - xmin)) * (half - 20) + 10;
    const py = (y) => H - 10 - ((y - ymin) / (ymax - ymin)) * (H - 20);
    // A diverged run is drawn up to its last finite step; the words say what happened.
    const finite = fit.trace.filter((t) => t.a !== null && t.b !== null && t.loss !== null && Math.abs(t.loss) < 1e12);
    if (!finite.length) finite.push(fit.trace[0]);
    fit = { ...fit, trace: finite };
    const losses = fit.trace.map((t) => Math.log10(Math.max(t.loss, 1e-12)));
    const lmin = Math.min(...losses), lmax = Math.max(...losses);
    let i = 0;
    function frame() {
      const t = fit.trace[Math.min(i, fit.trace.length - 1)];
      ctx.clearRect(0, 0, W, H);
      ctx.fillStyle = "#3b2a1a";
      for (let j = 0; j < xs.length; j++) ctx.fillRect(px(xs[j]) - 3, py(ys[j]) - 3, 6, 6);
      ctx.strokeStyle = "#d2691e";
      ctx.beginPath();
      ctx.moveTo(px(xmin), py(t.a * xmin + t.b));
      ctx.lineTo(px(xmax), py(t.a * xmax + t.b));
      ctx.stroke();
      ctx.strokeStyle = "#1b7f3b";
      ctx.beginPath();
      for (let j = 0; j <= i && j < losses.length; j++) {
        const x = half + 10 + (j / losses.length) * (half - 20);
        const y = H - 10 - ((losses[j] - lmin) / (lmax - lmin || 1)) * (H - 20);
        j ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
      }
      ctx.stroke();
      $("#learn-status").textContent = `step ${t.step}: a = ${num(t.a)}, b = ${num(t.b)}, loss = ${t.loss.toExponential(2)}`;
      i += 3;
      if (i < fit.trace.length + 3) requestAnimationFrame(frame);
      else if (fit.diverged) {
        const safe = stableRate(xs);
        $("#learn-status").textContent = `The run diverged: each step overshot further (the loss grew to ${t.loss.toExponential(1)} by step ${t.step}). ` +
          `The learning rate ${$("#learn-lr").value} is too large for these points: below ${safe.toPrecision(2)} it converges; try ${(safe / 2).toPrecision(2)}.`;
      } else $("#learn-status").textContent += ` → final a = ${num(fit.a)}, b = ${num(fit.b)}`;
    }
    frame();
  }
});
