// The demo page of an exported folder: check in the browser, show the verdict and the top-5,
// upload only when accepted or confirmed (to policy.upload_url; none: stop at the verdict).
import { load } from "./belka.js";

const $ = (sel) => document.querySelector(sel);
let current = null;
let last = null;

function show(message, isError = false) {
  $("#error").hidden = !isError;
  if (isError) $("#error").textContent = message;
}

async function check(file) {
  const gate = window.belka;
  current = file;
  $("#result").hidden = false;
  $("#uploaded").textContent = "";
  $("#verdict").className = "";
  $("#verdict").textContent = "Checking…";
  $("#upload").hidden = $("#upload-anyway").hidden = true;
  $("#top5").replaceChildren();
  $("#preview").src = URL.createObjectURL(file);
  try {
    const r = await gate.check(file);
    if (current !== file) return;
    last = r;
    const top = r.predictions[0];
    $("#verdict").className = r.verdict;
    $("#verdict").textContent = r.verdict === "accept"
      ? `Looks like a ${r.allowed} (score ${r.score.toFixed(3)}).`
      : `This does not look like a ${r.allowed}: top guess ${top.label} ` +
        `${(top.probability * 100).toFixed(0)}% (score ${r.score.toFixed(3)} < ${r.threshold}).`;
    for (const p of r.predictions) {
      const li = document.createElement("li");
      li.textContent = `${p.label} — ${(p.probability * 100).toFixed(1)}%`;
      $("#top5").append(li);
    }
    const t = gate.lastTiming;
    $("#timing").textContent = `checked in your browser: ${t.views} views, ` +
      `${(t.decode + t.preprocess + t.inference).toFixed(0)} ms, ${gate.threads} thread(s)`;
    const url = gate.policy.upload_url;
    $("#upload").hidden = !url || r.verdict !== "accept";
    $("#upload-anyway").hidden = !url || r.verdict === "accept";
  } catch (err) {
    $("#result").hidden = true;
    show(`Could not read this photo: ${err.message}`, true);
  }
}

async function upload(confirmed) {
  const url = window.belka.policy.upload_url;
  if (!url || !current) return;
  const form = new FormData();
  form.append("file", current);
  const sep = url.includes("?") ? "&" : "?";
  const response = await fetch(`${url}${sep}confirm=${confirmed}`, { method: "POST", body: form })
    .catch(() => null);
  $("#uploaded").textContent = response && response.ok
    ? `Uploaded (${last.verdict}${confirmed ? ", confirmed" : ""}).`
    : `Upload failed${response ? ` (HTTP ${response.status})` : ""}.`;
}

try {
  window.belka = await load(new URL(".", import.meta.url));
  $("#status").textContent = `Ready: checks for a ${window.belka.allowed} run in this page ` +
    `(${window.belka.threads} thread(s)); nothing is sent.`;
  $("#file").disabled = false;
  $("#file").addEventListener("change", () => $("#file").files.length && check($("#file").files[0]));
  $("#upload").addEventListener("click", () => upload(false));
  $("#upload-anyway").addEventListener("click", () => upload(true));
  document.documentElement.dataset.belka = "ready";
} catch (err) {
  $("#status").textContent = "";
  show(`The in-browser check cannot run here: ${err.message}`, true);
  document.documentElement.dataset.belka = "failed";
}
