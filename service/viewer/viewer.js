// The viewer: submit an image, follow the job's event stream, draw each method's heatmap over the input.
// Plain browser JavaScript, no build step, nothing loaded from elsewhere. The API key lives in
// sessionStorage only (this tab, this visit): never localStorage, never a cookie.
"use strict";

const KEY_STORAGE = "xai-api-key";
const TERMINAL = new Set(["finished", "failed", "canceled"]);
// Turbo colour map (Mikhailov 2019): the polynomial the worker colours its PNGs with (workers/render.py _TURBO).
const TURBO = [
  [0.13572138, 4.6153926, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
  [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
  [0.1066733, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
];
// 256 levels x RGB, evaluated once, as the worker's TURBO_LUT: clip(poly(x), 0, 1) * 255 + 0.5, truncated.
const TURBO_LUT = new Uint8Array(256 * 3);
for (let level = 0; level < 256; level++) {
  const x = level / 255;
  TURBO.forEach((c, channel) => {
    const value = c.reduce((sum, k, i) => sum + k * x ** i, 0);
    TURBO_LUT[level * 3 + channel] = Math.floor(Math.min(1, Math.max(0, value)) * 255 + 0.5);
  });
}
// Files drawn on the canvas or redundant with it; every other PNG of a method is shown as an extra image.
const SHOWN_ELSEWHERE = new Set(["overlay.png", "heatmap.png", "input.png"]);
// Metric blocks shown in their own rows or table; any other block of scalars goes into "details".
const KNOWN_BLOCKS = new Set(["prediction", "target", "model", "input", "method", "faithfulness", "complexity",
  "localization", "methods", "comparison", "precision"]);
const DEFAULT_DROP_TEXT = "Drop a PNG, JPEG, TIFF or DICOM file here, or choose one";

const $ = (id) => document.getElementById(id);
const state = { methods: {}, models: [], file: null, panels: [], catalogueKey: null };
const element = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class ApiError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

async function api(path, options = {}) {
  const key = $("api-key").value.trim();
  const headers = Object.assign({}, options.headers, key ? { Authorization: `Bearer ${key}` } : {});
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (error) {
    throw new ApiError("unreachable", `the service did not answer (${error.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function errorOf(response) {
  const body = await response.json().catch(() => ({}));
  const error = (body && body.error) || { code: "http_error", message: `HTTP ${response.status}` };
  return new ApiError(error.code, error.message);
}

function showError(error) {
  const box = $("error");
  box.replaceChildren();
  if (!error) { box.hidden = true; return; }
  box.append(element("code", { textContent: error.code || "error" }), `: ${error.message || ""}`);
  box.hidden = false;
}

// ---- the request form ----

// The models and methods this key sees; a reload only when the key changed, and only the latest applies.
async function loadCatalogue() {
  const key = $("api-key").value.trim();
  if (key === state.catalogueKey) return;
  state.catalogueKey = key;
  showError(null);
  try {
    const [models, methods] = await Promise.all([
      api("/v1/models").then((r) => r.json()), api("/v1/methods").then((r) => r.json())]);
    if (key !== state.catalogueKey) return;  // the key was changed meanwhile: that load applies
    state.models = models.models;
    state.methods = Object.fromEntries(methods.methods.map((m) => [m.name, m]));
    fillModels();
  } catch (error) {
    if (key !== state.catalogueKey) return;
    state.catalogueKey = null;  // the same key may be tried again
    showError(error);
  }
}

function fillModels() {
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...state.models.filter((m) => m.status === "ready").map((m) =>
    new Option(`${m.id} (v${m.version}): ${m.class_names.join(" / ")}`, m.id)));
  if (state.models.some((m) => m.id === previous)) select.value = previous;
  fillModelChoices();
}

function currentModel() {
  return state.models.find((m) => m.id === $("model").value);
}

function fillModelChoices() {
  const model = currentModel();
  $("target").replaceChildren(new Option("the predicted class", ""),
    ...(model ? model.class_names.map((name) => new Option(name, name)) : []));
  const box = $("methods");
  const checked = new Set(chosenMethods());
  box.querySelectorAll("label").forEach((label) => label.remove());
  for (const name of model ? model.methods : []) {
    const spec = state.methods[name];
    if (!spec) continue;
    const input = element("input", { type: "checkbox", value: name, name: "method", id: `method-${name}` });
    input.checked = checked.has(name) || (checked.size === 0 && name === "grad_cam");
    input.addEventListener("change", fillParams);
    box.append(element("label", { htmlFor: input.id, title: spec.description }, input, ` ${spec.title} `,
      element("span", { className: "hint", textContent: spec.queue === "slow" ? "(slow)" : "" })));
  }
  fillParams();
}

function chosenMethods() {
  return [...$("methods").querySelectorAll("input:checked")].map((input) => input.value);
}

function fillParams() {
  const holder = $("params");
  const kept = Object.fromEntries([...holder.querySelectorAll(".param-group")].map((g) => [g.dataset.method, g]));
  holder.replaceChildren();
  for (const name of chosenMethods()) {
    const spec = state.methods[name];
    if (!spec || !spec.params.length) continue;
    if (kept[name]) { holder.append(kept[name]); continue; }  // keep what was typed in it
    const group = element("div", { className: "param-group" }, element("h3", { textContent: spec.title }));
    group.dataset.method = name;
    for (const param of spec.params) group.append(paramInput(name, param));
    holder.append(group);
  }
}

// One form control per parameter of GET /v1/methods: {name, type, default, description, range, choices}.
function paramInput(method, param) {
  let input;
  if (param.choices) {
    input = element("select", {}, ...param.choices.map((choice) => new Option(choice, choice)));
    if (param.default !== null) input.value = param.default;
  } else if (param.type === "bool") {
    input = element("input", { type: "checkbox", checked: !!param.default });
  } else if (param.type === "int" || param.type === "float") {
    input = element("input", { type: "number", step: param.type === "int" ? "1" : "any" });
    if (param.default !== null) input.value = param.default;
    if (param.range) {
      if (param.range[0] !== null) input.min = param.range[0];
      if (param.range[1] !== null) input.max = param.range[1];
    }
  } else {
    input = element("input", { type: "text", value: param.default ?? "" });
  }
  input.id = `param-${method}-${param.name}`;
  Object.assign(input.dataset, { name: param.name, type: param.type, fallback: JSON.stringify(param.default) });
  const range = param.range ? ` [${param.range[0] ?? ""}, ${param.range[1] ?? ""}]` : "";
  return element("label", { className: "param", htmlFor: input.id, title: `${param.description}${range}` },
    element("span", { textContent: param.name }), input);
}

// The parameters the person changed from their defaults (the service fills in the rest).
function paramValues(method) {
  const values = {};
  document.querySelectorAll(`.param-group[data-method="${method}"] [data-name]`).forEach((input) => {
    const { name, type, fallback } = input.dataset;
    let value;
    if (type === "bool") value = input.checked;
    else if (type === "int" || type === "float") value = input.value === "" ? JSON.parse(fallback) : Number(input.value);
    else value = input.value;
    if (JSON.stringify(value) !== fallback) values[name] = value;
  });
  return values;
}

// ---- submitting and following a job ----

async function submit() {
  showError(null);
  $("result").hidden = true;
  const methods = chosenMethods();
  if (!state.file) return showError({ code: "no_file", message: "choose or drop an image first" });
  if (!methods.length) return showError({ code: "no_method", message: "tick at least one method" });
  const params = methods.length === 1 ? paramValues(methods[0])
    : Object.fromEntries(methods.map((m) => [m, paramValues(m)]));
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  form.append("model_id", $("model").value);
  form.append("method", methods.join(","));
  form.append("params", JSON.stringify(params));
  if ($("target").value) form.append("target", $("target").value);
  if ($("faithfulness").checked) form.append("faithfulness", "true");
  $("submit").disabled = true;
  $("placeholder").hidden = true;
  $("progress-row").hidden = true;
  try {
    const accepted = await (await api("/v1/explanations", { method: "POST", body: form })).json();
    showProgress(0, "queued");
    const job = await follow(accepted.job_id);
    if (job.status === "finished") await showResult(job);
    else showError(job.error || { code: job.status, message: `the job ended ${job.status}` });
  } catch (error) {
    showError(error);
  } finally {
    $("submit").disabled = false;
  }
}

function showProgress(progress, stage, note) {
  $("progress-row").hidden = false;
  $("progress").value = progress;
  const text = `${Math.round(progress * 100)}% ${String(stage || "").replaceAll("_", " ")}`;
  $("stage").textContent = note ? `${text}: ${note}` : text;
}

// The job's event stream until its final status; should a stream close early, reopen it (a new stream
// starts from the job's current state), and after a few tries poll instead.
async function follow(jobId) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const job = await readEvents(jobId);
    if (job) return job;
  }
  for (;;) {
    const job = await (await api(`/v1/jobs/${jobId}`)).json();
    showProgress(job.progress, job.stage, job.note);
    if (TERMINAL.has(job.status)) return job;
    await sleep(1000);
  }
}

// EventSource cannot send an Authorization header, so the stream is read with fetch and parsed here.
async function readEvents(jobId) {
  const response = await api(`/v1/jobs/${jobId}/events`, { headers: { Accept: "text/event-stream" } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    // CRLF joined across chunks too: a lone CR at the end waits for its LF.
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (!event) continue;  // a ping comment
      if (event.name === "progress") showProgress(event.data.progress, event.data.stage, event.data.note);
      else if (event.name === "error") {
        reader.cancel().catch(() => {});
        const error = event.data.error || {};
        throw new ApiError(error.code || "error", error.message || "the job's event stream failed");
      } else if (event.name === "status") {
        showProgress(event.data.progress, event.data.stage, event.data.note);
        reader.cancel().catch(() => {});
        return event.data;
      }
    }
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { name, data: JSON.parse(data.join("\n")) } : null;
}

// ---- the result ----

async function showResult(job) {
  const files = job.result.files;
  const methods = job.request.methods;
  const several = methods.length > 1;
  // input.png is the input's display copy; a result without it falls back to the worker's overlay.
  const baseName = files["input.png"] ? "input.png" : several ? `${methods[0]}/overlay.png` : "overlay.png";
  const input = await loadImage(files[baseName]);
  const width = input.naturalWidth, height = input.naturalHeight;
  state.panels = [];
  const panels = $("panels");
  panels.replaceChildren();
  panels.classList.toggle("several", several);
  for (const method of methods) {
    const prefix = several ? `${method}/` : "";
    const heatmap = await loadNpy(files[`${prefix}heatmap_model.npy`]);
    const levels = enlarge(normalise(heatmap), width, height);
    const canvas = element("canvas", { width, height, id: several ? `overlay-canvas-${method}` : "overlay-canvas" });
    canvas.setAttribute("aria-label", `${method} heatmap over the input`);
    canvas.dataset.base = baseName;
    const title = state.methods[method]?.title || method;
    const panel = element("div", { className: "panel", id: `panel-${method}` },
      element("h3", { textContent: title }), canvas);
    const extras = Object.keys(files).filter((name) => name.startsWith(prefix) && name.endsWith(".png")
      && !name.slice(prefix.length).includes("/") && !SHOWN_ELSEWHERE.has(name.slice(prefix.length)));
    if (extras.length) {
      panel.append(element("div", { className: "extras" }, ...extras.map((name) => element("figure", {},
        element("img", { src: files[name], alt: name }),
        element("figcaption", { textContent: name.slice(prefix.length, -4).replaceAll("_", " ") })))));
    }
    panels.append(panel);
    state.panels.push({ canvas, input, levels, layer: element("canvas", { width, height }) });
  }
  redraw();
  showMetrics(job);
  showDownloads(files);
  $("result").hidden = false;
  $("placeholder").hidden = true;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new ApiError("unknown_file", "a result image could not be loaded (its signed URL may have expired)"));
    image.src = url;
  });
}

// A NumPy .npy file (v1: 2-byte header length; v2/v3: 4-byte) of little-endian float32 (or float64),
// C order, H x W, as the API's heatmap_model.npy is. Signed URL: no key needed.
async function loadNpy(url) {
  const response = await fetch(url);
  if (!response.ok) throw await errorOf(response);
  const bytes = await response.arrayBuffer();
  const view = new DataView(bytes);
  const magic = String.fromCharCode(...new Uint8Array(bytes, 1, 5));
  if (view.getUint8(0) !== 0x93 || magic !== "NUMPY") throw new ApiError("unsupported_heatmap", "the heatmap is not a .npy file");
  const major = view.getUint8(6);
  const start = major === 1 ? 10 : 12;
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const header = new TextDecoder().decode(new Uint8Array(bytes, start, headerLength));
  const descr = (header.match(/'descr':\s*'([^']+)'/) || [])[1];
  const shape = ((header.match(/'shape':\s*\(([^)]*)\)/) || [])[1] || "").split(",").filter((s) => s.trim()).map(Number);
  if (/'fortran_order':\s*True/.test(header) || shape.length < 2 || !["<f4", "<f8"].includes(descr)) {
    throw new ApiError("unsupported_heatmap", `the heatmap is ${descr} ${shape.join("x")}, not a float H x W array`);
  }
  const [height, width] = shape.slice(-2);
  const body = bytes.slice(start + headerLength);
  const values = descr === "<f4" ? new Float32Array(body) : Float32Array.from(new Float64Array(body));
  return { width, height, values: values.subarray(0, width * height) };
}

// Min-max to [0, 1]; a constant map becomes zeros (as workers/render.py normalise does).
function normalise({ width, height, values }) {
  let low = Infinity, high = -Infinity;
  for (const v of values) { if (Number.isFinite(v)) { if (v < low) low = v; if (v > high) high = v; } }
  const span = high - low;
  const levels = new Float32Array(values.length);
  if (span > 1e-12) for (let i = 0; i < values.length; i++) levels[i] = Number.isFinite(values[i]) ? (values[i] - low) / span : 0;
  return { width, height, levels };
}

// Bilinear enlargement with pixel centres aligned (PIL's BILINEAR, the worker's resize) to width x height.
function enlarge({ width: w, height: h, levels }, width, height) {
  if (w === width && h === height) return levels;
  const out = new Float32Array(width * height);
  const sx = w / width, sy = h / height;
  const xs = new Int32Array(width), xt = new Float32Array(width);
  for (let x = 0; x < width; x++) {
    const fx = Math.min(Math.max((x + 0.5) * sx - 0.5, 0), w - 1);
    xs[x] = Math.min(Math.floor(fx), w - 2 < 0 ? 0 : w - 2);
    xt[x] = w > 1 ? fx - xs[x] : 0;
  }
  for (let y = 0; y < height; y++) {
    const fy = Math.min(Math.max((y + 0.5) * sy - 0.5, 0), h - 1);
    const y0 = Math.min(Math.floor(fy), h - 2 < 0 ? 0 : h - 2);
    const ty = h > 1 ? fy - y0 : 0;
    const y1 = h > 1 ? y0 + 1 : y0;
    for (let x = 0; x < width; x++) {
      const x0 = xs[x], x1 = w > 1 ? x0 + 1 : x0, tx = xt[x];
      const top = levels[y0 * w + x0] * (1 - tx) + levels[y0 * w + x1] * tx;
      const bottom = levels[y1 * w + x0] * (1 - tx) + levels[y1 * w + x1] * tx;
      out[y * width + x] = top * (1 - ty) + bottom * ty;
    }
  }
  return out;
}

function redraw() {
  const opacity = Number($("opacity").value);
  const threshold = Number($("threshold").value);
  $("opacity-value").textContent = `${Math.round(opacity * 100)}%`;
  $("threshold-value").textContent = `${Math.round(threshold * 100)}%`;
  const alpha = Math.round(opacity * 255);
  for (const { canvas, input, levels, layer } of state.panels) {
    const pixels = new ImageData(canvas.width, canvas.height);
    const data = pixels.data;
    for (let i = 0; i < levels.length; i++) {
      const level = levels[i];
      if (level < threshold) continue;  // hidden: transparent
      const lut = Math.floor(level * 255 + 0.5) * 3;
      const o = i * 4;
      data[o] = TURBO_LUT[lut]; data[o + 1] = TURBO_LUT[lut + 1]; data[o + 2] = TURBO_LUT[lut + 2]; data[o + 3] = alpha;
    }
    layer.getContext("2d").putImageData(pixels, 0, 0);
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(input, 0, 0, canvas.width, canvas.height);
    context.drawImage(layer, 0, 0);
  }
}

function drawColourBar() {
  const bar = $("colour-bar");
  const pixels = new ImageData(256, bar.height);
  for (let y = 0; y < bar.height; y++) {
    for (let level = 0; level < 256; level++) {
      pixels.data.set([TURBO_LUT[level * 3], TURBO_LUT[level * 3 + 1], TURBO_LUT[level * 3 + 2], 255], (y * 256 + level) * 4);
    }
  }
  bar.getContext("2d").putImageData(pixels, 0, 0);
}

const number = (value) => (typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(3)) : "–");
const scalar = (value) => (typeof value === "number" ? number(value) : typeof value === "object" ? JSON.stringify(value) : String(value));

// A body row: its first cell a row header, the others data.
function addRow(table, cells) {
  const tr = (table.tBodies[0] || table.createTBody()).insertRow();
  cells.forEach((cell, i) => tr.append(element(i ? "td" : "th", i ? { textContent: cell } : { textContent: cell, scope: "row" })));
  return tr;
}

function showMetrics(job) {
  const metrics = job.result.metrics;
  const timing = job.result.timing;
  const summary = $("metrics-table");
  summary.replaceChildren();
  const prediction = metrics.prediction;
  const probabilities = Object.entries(prediction.probabilities || {}).map(([name, p]) => `${name} ${number(p)}`).join(", ");
  addRow(summary, ["prediction", `${prediction.class_name} (score ${number(prediction.score)})`]);
  if (probabilities) addRow(summary, ["probabilities", probabilities]);
  addRow(summary, ["target", `${metrics.target.class_name} (${metrics.target.chosen_by})`]);
  addRow(summary, ["model", `${metrics.model.id} v${metrics.model.version}`]);
  const details = (metrics.input && metrics.input.details) || {};
  addRow(summary, ["input", `${metrics.input.width} x ${metrics.input.height}, ${metrics.input.channels} channel(s)`
    + (details.format ? `, ${details.format}` : "") + (metrics.input.annotation ? ", annotated" : "")]);
  if (timing) {
    const stages = ["queue_ms", "load_ms", "explain_ms", "score_ms", "render_ms", "store_ms"];
    const total = stages.reduce((sum, k) => sum + (timing[k] || 0), 0);
    addRow(summary, ["timing", `${Math.round(total)} ms: ` + stages.map((k) => `${k.slice(0, -3)} ${Math.round(timing[k] || 0)}`)
      .join(", ") + ` ms; batch of ${timing.batch_size}${timing.model_resident ? ", model resident" : ""}`]);
  }
  const blocks = metrics.methods || { [metrics.method.name]: metrics };
  for (const [method, block] of Object.entries(blocks)) {
    const params = block.method && block.method.params;
    if (params && Object.keys(params).length) {
      addRow(summary, [`${method} parameters`, Object.entries(params).map(([k, v]) => `${k} ${scalar(v)}`).join(", ")]);
    }
    if (block.precision) addRow(summary, [`${method} precision`, block.precision]);
    for (const [name, value] of Object.entries(block)) {
      if (KNOWN_BLOCKS.has(name) || value === null || typeof value !== "object" || Array.isArray(value)) continue;
      const shown = Object.entries(value).filter(([, v]) => v === null || typeof v !== "object");
      if (shown.length) addRow(summary, [`${name} details`, shown.map(([k, v]) => `${k} ${scalar(v)}`).join(", ")]);
    }
  }

  // One row per method: metrics.comparison for several, the single method's own figures otherwise.
  const rows = metrics.comparison || [Object.assign({ method: metrics.method.name,
    deletion_auc: metrics.faithfulness?.deletion_auc, insertion_auc: metrics.faithfulness?.insertion_auc,
    complexity: metrics.complexity?.area_fraction }, metrics.localization || {})];
  const localisation = ["iou_p85", "iou_p90", "iou_p95", "iou_p98", "ncc"].filter((k) => rows.some((r) => k in r));
  const table = $("comparison-table");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  for (const title of ["method", "deletion AUC (lower is better)", "insertion AUC (higher is better)",
    "area fraction (lower is simpler)", ...localisation.map((k) => k.replace("_p", " p"))]) {
    head.append(element("th", { scope: "col", textContent: title }));
  }
  for (const r of rows) {
    const tr = addRow(table, [state.methods[r.method]?.title || r.method, number(r.deletion_auc),
      number(r.insertion_auc), number(r.complexity), ...localisation.map((k) => number(r[k]))]);
    tr.dataset.method = r.method;
  }
}

function showDownloads(files) {
  $("downloads").replaceChildren(...Object.entries(files).map(([name, url]) => element("li", {},
    element("a", { href: url, textContent: name, download: name.replaceAll("/", "_") }))));
}

// ---- wiring ----

function chooseFile(file) {
  state.file = file || null;
  $("drop-text").textContent = file ? `${file.name} (${Math.max(1, Math.round(file.size / 1024))} KiB)` : DEFAULT_DROP_TEXT;
}

function start() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, key.value.trim());
    loadCatalogue();
  });
  $("key-form").addEventListener("submit", (event) => {  // Enter in the key field: use it, never post a form
    event.preventDefault();
    key.dispatchEvent(new Event("change"));
  });
  $("model").addEventListener("change", fillModelChoices);
  $("file-input").addEventListener("change", (event) => chooseFile(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) chooseFile(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file-input").click(); }
  });
  $("submit").addEventListener("click", submit);
  $("opacity").addEventListener("input", redraw);
  $("threshold").addEventListener("input", redraw);
  drawColourBar();
  loadCatalogue();
}

document.addEventListener("DOMContentLoaded", start);
