// belka pages: upload + verdict, gallery, explain. Plain JS, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);

function showError(message) {
  const el = $("#error");
  el.textContent = message;
  el.hidden = !message;
}

// Never throws: a network failure (server down, connection reset) comes back as status 0 with
// a body whose detail says so, like the server's own JSON errors {"detail", "error"}.
async function api(path, options = {}) {
  try {
    const response = await fetch(path, options);
    const type = response.headers.get("content-type") || "";
    const body = type.includes("application/json") ? await response.json() : null;
    return { ok: response.ok, status: response.status, body };
  } catch (err) {
    return { ok: false, status: 0, body: { detail: "The server could not be reached. Try again.", error: "network" } };
  }
}

function formWith(file, fields = {}) {
  const form = new FormData();
  form.append("file", file);
  for (const [k, v] of Object.entries(fields)) if (v !== "" && v != null) form.append(k, v);
  return form;
}

// ---- Upload page -------------------------------------------------------------------------
// The verdict comes from the gate running in this page (/web/belka.js, the server's own gate
// exported for the browser): the photo is not sent to check it. It is sent only to store it,
// and the server then checks it again (never trust the client) and draws the heat map. A page
// that cannot run the browser gate (no WebAssembly, no runtime on the server) asks the server.
function loadBrowserGate() {
  if (typeof WebAssembly !== "object") return Promise.resolve(null);
  return import("/web/belka.js")
    .then((m) => m.load("/web/"))
    .catch((err) => { console.warn(`belka: in-browser check unavailable (${err.message})`); return null; });
}

function uploadPage() {
  const input = $("#file");
  const zone = $("#upload-form");
  let current = null;
  let checks = 0;    // the latest check wins when photos are picked faster than answers come
  let previewUrl = null;
  const browserGate = loadBrowserGate();
  browserGate.then((gate) => {
    document.body.dataset.gate = gate ? "browser" : "server";
    window.belka = gate;
  });

  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) check(e.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => input.files.length && check(input.files[0]));
  $("#store").addEventListener("click", () => store(false));
  $("#store-anyway").addEventListener("click", () => store(true));

  // The verdict in words. When a tile decided (a small squirrel in a big photo), say so, show
  // its box on the photo and its score: the top-5 below are the whole photo's, and without this
  // "Looks like a squirrel" above "park bench 42%" reads as a contradiction.
  function showVerdict(body, decidedBy) {
    const accepted = body.verdict === "accept";
    const verdict = $("#verdict");
    const top = body.predictions[0];
    const box = body.box ?? body.tile ?? null;
    const pct = (p) => `${(p * 100).toFixed(0)}%`;
    verdict.className = accepted ? "accept" : "warn";
    if (accepted && box) {
      verdict.textContent = `Looks like a ${body.allowed}: the part of the photo in the box scores ` +
        `${body.score.toFixed(2)} for ${body.allowed} (${body.threshold} needed). As a whole, ` +
        `the photo looks most like ${top.label} (${pct(top.probability)}).`;
    } else if (accepted) {
      verdict.textContent = `Looks like a ${body.allowed}: the whole photo scores ${body.score.toFixed(2)} ` +
        `for ${body.allowed} (${body.threshold} needed).`;
    } else {
      verdict.textContent = `Warning: this does not look like a ${body.allowed}. The model's top guess is ` +
        `${top.label} (${pct(top.probability)}); the best part of the photo scores ${body.score.toFixed(3)} ` +
        `for ${body.allowed}, under the ${body.threshold} needed.`;
    }
    showBox(accepted ? box : null);
    $("#decided").textContent = decidedBy;
    $("#top5").innerHTML = "";
    $("#top5-caption").textContent = box && accepted ? "the whole photo's top 5" : "top 5";
    for (const p of body.predictions) {
      const li = document.createElement("li");
      li.textContent = `${p.label} — ${(p.probability * 100).toFixed(1)}%`;
      $("#top5").appendChild(li);
    }
    $("#store").hidden = !accepted;
    $("#store-anyway").hidden = accepted;
  }

  // The deciding tile as a box over the preview, in percent of the photo's own size.
  function showBox(box) {
    const frame = $("#preview-box");
    const img = $("#preview");
    if (!box) { frame.hidden = true; $("#preview-caption").textContent = "your photo"; return; }
    const place = () => {
      const w = img.naturalWidth, h = img.naturalHeight;
      if (!w || !h) return;
      const [x0, y0, x1, y1] = box;
      frame.style.left = `${(100 * x0) / w}%`;
      frame.style.top = `${(100 * y0) / h}%`;
      frame.style.width = `${(100 * (x1 - x0)) / w}%`;
      frame.style.height = `${(100 * (y1 - y0)) / h}%`;
      frame.hidden = false;
    };
    if (img.complete && img.naturalWidth) place(); else img.addEventListener("load", place, { once: true });
    $("#preview-caption").textContent = "your photo; the box is the part that decided";
  }

  function showHeatmap(body) {
    if (!body.heatmap) return;
    $("#heatmap").src = body.heatmap.overlay_url;
    $("#heatmap-caption").textContent = `where the model saw “${body.heatmap.label}”`;
  }

  async function check(file) {
    const seq = ++checks;
    current = file;
    showError("");
    $("#stored").textContent = "";
    $("#decided").textContent = "";
    $("#verdict").className = "";
    $("#verdict").textContent = "Checking…";
    $("#store").hidden = true;
    $("#store-anyway").hidden = true;
    $("#result").hidden = false;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    $("#preview").src = previewUrl;
    $("#heatmap").removeAttribute("src");
    $("#heatmap-caption").textContent = "where the model looked";
    $("#top5").innerHTML = "";
    const gate = await browserGate;
    if (seq !== checks) return;
    if (gate) {
      try {
        const body = await gate.check(file);
        if (seq !== checks) return;
        showVerdict(body, "Checked in your browser: the photo has not been sent. " +
                          "The server checks it again when you upload it.");
        $("#heatmap-caption").textContent = "where the model looked: shown once uploaded";
        return;
      } catch (err) {
        if (seq !== checks) return;
        // a file the browser cannot decode: let the server say what is wrong with it
      }
    }
    const { ok, body } = await api("/api/v1/check", { method: "POST", body: formWith(file) });
    if (seq !== checks) return;  // another photo was picked meanwhile
    if (!ok) {
      $("#result").hidden = true;
      showError(body ? body.detail : "The server could not read this file.");
      return;
    }
    showVerdict(body, "Checked by the server.");
    showHeatmap(body);
  }

  async function store(confirm) {
    if (!current) return;
    const file = current;
    showError("");
    const { ok, status, body } = await api(`/api/v1/uploads?confirm=${confirm}`, {
      method: "POST", body: formWith(file),
    });
    if (status === 409 && body && body.verdict) {
      // the server's own check refused what this page accepted: the server decides
      showVerdict(body, "The server checked it again and decided: not stored.");
      return;
    }
    if (!ok) { showError(body ? body.detail : "Upload failed."); return; }
    $("#stored").innerHTML = `Stored as #${body.id}${body.duplicate ? " (already there)" : ""}. <a href="/gallery">See the gallery</a>.`;
    if (!$("#heatmap").getAttribute("src")) {
      // the photo is on the server now: its check again, with the heat map
      const again = await api("/api/v1/check", { method: "POST", body: formWith(file) });
      if (again.ok && current === file) {
        showHeatmap(again.body);
        $("#decided").textContent = `Checked in your browser, then again by the server on upload: ${again.body.verdict} (score ${again.body.score.toFixed(3)}).`;
      }
    }
  }
}

// ---- Gallery page ------------------------------------------------------------------------
function galleryPage() {
  const limit = 12;
  let offset = 0;

  async function load() {
    const { ok, body } = await api(`/api/v1/uploads?offset=${offset}&limit=${limit}`);
    if (!ok) { showError(body ? body.detail : "Could not load the gallery."); return; }
    const grid = $("#gallery");
    grid.innerHTML = "";
    $("#empty").hidden = body.total > 0;
    for (const item of body.items) {
      const card = document.createElement("figure");
      card.className = `card ${item.verdict}`;
      card.dataset.id = item.id;
      const img = document.createElement("img");
      img.src = `${item.image_url}?thumbnail=true`;
      img.alt = item.filename;
      img.loading = "lazy";
      const open = document.createElement("button");
      open.type = "button";
      open.className = "thumb";
      open.title = "open the full photo, its verdict and where the model looked";
      open.appendChild(img);
      open.addEventListener("click", () => view(item));
      const caption = document.createElement("figcaption");
      caption.textContent = `#${item.id} ${item.predictions[0] ? item.predictions[0].label : ""} · ${item.verdict}`;
      const del = document.createElement("button");
      del.type = "button";
      del.textContent = "Delete";
      del.dataset.testid = "delete";
      // Deleting takes two clicks: the first asks, the second (or "Keep") answers.
      const keep = document.createElement("button");
      keep.type = "button";
      keep.textContent = "Keep";
      keep.hidden = true;
      keep.addEventListener("click", () => {
        del.textContent = "Delete";
        del.classList.remove("danger");
        keep.hidden = true;
        delete del.dataset.armed;
      });
      del.addEventListener("click", async () => {
        if (!del.dataset.armed) {
          del.dataset.armed = "1";
          del.textContent = "Delete for good";
          del.classList.add("danger");
          keep.hidden = false;
          return;
        }
        del.disabled = true;
        keep.hidden = true;
        const result = await api(`/api/v1/uploads/${item.id}`, { method: "DELETE" });
        if (!result.ok && result.status !== 404) {
          del.disabled = false;
          showError(result.body ? result.body.detail : "Could not delete it.");
          return;
        }
        showError("");
        if (body.items.length === 1 && offset > 0) offset -= limit;
        load();
      });
      card.append(open, caption, del, keep);
      grid.appendChild(card);
    }
    const pages = Math.max(1, Math.ceil(body.total / limit));
    $("#page-info").textContent = `page ${Math.floor(offset / limit) + 1} of ${pages} · ${body.total} stored`;
    $("#prev").disabled = offset === 0;
    $("#next").disabled = offset + limit >= body.total;
  }
  // The viewer: the stored photo at full size, the verdict stored with it, its top-5, and a
  // heat map of the class that decided (computed now, on the stored bytes).
  async function view(item) {
    const dialog = $("#viewer");
    $("#viewer-photo").src = item.image_url;
    $("#viewer-photo").alt = item.filename;
    $("#viewer-title").textContent = `#${item.id} · ${item.filename}`;
    const accepted = item.verdict === "accept";
    $("#viewer-verdict").textContent = accepted
      ? `Accepted as a ${item.allowed}: score ${item.score.toFixed(3)}.`
      : `Stored with a warning: not a ${item.allowed} (score ${item.score.toFixed(3)}).`;
    $("#viewer-verdict").className = `verdict ${item.verdict}`;
    const list = $("#viewer-top5");
    list.innerHTML = "";
    for (const p of item.predictions.slice(0, 5)) {
      const li = document.createElement("li");
      li.textContent = `${p.label} ${(p.probability * 100).toFixed(1)}%`;
      list.appendChild(li);
    }
    $("#viewer-heat").removeAttribute("src");
    $("#viewer-heat-caption").textContent = "where the model looked: working…";
    dialog.showModal();
    const photo = await fetch(item.image_url).then((r) => (r.ok ? r.blob() : null), () => null);
    if (!photo || !dialog.open) return;
    const { ok, body } = await api("/api/v1/check", { method: "POST", body: formWith(new File([photo], item.filename)) });
    if (!dialog.open) return;
    if (!ok || !body.heatmap) { $("#viewer-heat-caption").textContent = "where the model looked: not available"; return; }
    $("#viewer-heat").src = body.heatmap.overlay_url;
    $("#viewer-heat-caption").textContent = `where the model saw “${body.heatmap.label}”`;
  }
  $("#viewer-close").addEventListener("click", () => $("#viewer").close());
  $("#prev").addEventListener("click", () => { offset = Math.max(0, offset - limit); load(); });
  $("#next").addEventListener("click", () => { offset += limit; load(); });
  load();
}

// ---- Explain page ------------------------------------------------------------------------
function explainPage() {
  let jobId = null;
  const status = (text) => { $("#status").textContent = text; };
  // A new photo, method or class makes the last picture stale: it goes away at once.
  const clearResult = () => {
    $("#explanation").hidden = true;
    $("#overlay").removeAttribute("src");
    $("#heat").removeAttribute("src");
    $("#explain-caption").textContent = "";
  };
  // Input-level methods (saliency, occlusion, LIME...) have no layer to choose.
  const syncLayer = () => {
    const usesLayer = $("#method").selectedOptions[0]?.dataset.usesLayer !== "no";
    $("#layer").disabled = !usesLayer;
    $("#layer").title = usesLayer ? "" : "this method explains the input pixels, not a layer";
  };
  for (const el of ["#file", "#upload-id", "#method", "#layer", "#class"]) {
    $(el).addEventListener("change", () => { clearResult(); status(""); showError(""); });
  }
  $("#method").addEventListener("change", syncLayer);
  syncLayer();
  $("#cancel").addEventListener("click", async () => {
    if (jobId) {
      status("Cancelling…");
      await api(`/api/v1/jobs/${jobId}`, { method: "DELETE" });
    }
  });
  const submit = $("#explain-form button[type=submit]");
  $("#explain-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (submit.disabled) return;  // one explanation at a time
    showError("");
    clearResult();
    submit.disabled = true;
    try {
      await explain();
    } finally {
      submit.disabled = false;
      $("#progress").hidden = true;
      $("#cancel").hidden = true;
      jobId = null;
    }
  });

  async function explain() {
    let file = $("#file").files[0];
    const id = $("#upload-id").value;
    if (!file && id) {
      const response = await fetch(`/api/v1/uploads/${id}/image`).catch(() => null);
      if (!response || !response.ok) { showError(`No stored upload #${id}.`); return; }
      file = new File([await response.blob()], `upload-${id}`);
    }
    if (!file) { showError("Pick a photo or give a stored upload id."); return; }
    const fields = {
      method: $("#method").value, layer: $("#layer").disabled ? "" : $("#layer").value,
      class: $("#class").value, background: "true",
    };
    status("Working…");
    const started = await api("/api/v1/explain", { method: "POST", body: formWith(file, fields) });
    if (!started.ok) { status(""); showError(started.body ? started.body.detail : "Explain failed."); return; }
    jobId = started.body.id;
    $("#progress").hidden = false;
    $("#progress").removeAttribute("value");
    $("#cancel").hidden = false;
    for (;;) {
      await new Promise((r) => setTimeout(r, 300));
      const { ok, body } = await api(`/api/v1/jobs/${jobId}`);
      if (!ok) { status(""); showError(body ? body.detail : "Lost track of the job."); break; }
      if (body.total) { $("#progress").max = body.total; $("#progress").value = body.done; }
      if (body.status === "done") {
        const answer = await api(body.result_url);
        if (!answer.ok) { status(""); showError(answer.body ? answer.body.detail : "Explain failed."); break; }
        const result = answer.body;
        $("#overlay").src = result.overlay_url;
        $("#heat").src = result.heatmap_url;
        $("#explain-caption").textContent = `${result.method} at ${result.layer} for “${result.label}” (${(result.probability * 100).toFixed(1)}%)`;
        $("#explanation").hidden = false;
        status("");
        break;
      }
      if (body.status === "cancelled") { status("Cancelled: nothing was computed past that point."); break; }
      if (body.status === "failed") { status(""); showError(body.error); break; }
    }
  }
}

// Any .dropzone[data-drop="#input"] takes a dropped file into its input (the Upload page has
// its own, which also starts the check).
function dropZones() {
  for (const zone of document.querySelectorAll(".dropzone[data-drop]")) {
    const input = document.querySelector(zone.dataset.drop);
    const name = document.createElement("span");
    name.className = "chosen";
    zone.appendChild(name);
    const show = () => { name.textContent = input.files[0] ? input.files[0].name : ""; };
    input.addEventListener("change", show);
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (!e.dataTransfer.files.length) return;
      input.files = e.dataTransfer.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
  }
}

dropZones();
({ upload: uploadPage, gallery: galleryPage, explain: explainPage })[document.body.dataset.page]?.();
