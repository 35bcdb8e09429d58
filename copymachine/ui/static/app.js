// copymachine ui: plain JavaScript, no libraries, nothing fetched from anywhere but this server.
"use strict";

const state = { info: null, original: null, edited: null, effects: {}, pending: {}, timers: {} };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
const $ = (sel, root) => (root || document).querySelector(sel);
const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

async function api(path, options) {
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok || data.error) throw new Error(data.error || response.statusText);
  return data;
}
const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

// --- pages -------------------------------------------------------------------------------
function showPage() {
  const page = (location.hash || "#make").slice(1);
  for (const p of ["make", "queue", "results"]) {
    $(`#page-${p}`).classList.toggle("hidden", p !== page);
    $(`nav a[data-page=${p}]`).classList.toggle("active", p === page);
  }
  if (page === "results") refreshResults();
}
window.addEventListener("hashchange", showPage);

// --- Make: the original, the effects and their live previews -------------------------------
async function upload(file) {
  const response = await fetch("/api/upload", { method: "POST", headers: { "X-Filename": encodeURIComponent(file.name) }, body: file });
  const data = await response.json();
  if (!response.ok || data.error) throw new Error(data.error || response.statusText);
  return data;
}

function modeOf(effect) {
  const select = $(`.effect-card[data-effect=${effect.name}] [data-key=mode]`);
  return select ? select.value : null;
}

function paramVisible(effect, param) {
  const mode = effect.params.find((p) => p.key === "mode");
  if (!mode || param.key === "mode") return true;
  const prefix = param.help.split(":")[0];
  return !mode.choices.includes(prefix) || prefix === modeOf(effect);
}

function sliderRange(p) {
  let min = p.min ?? 0, max = p.max ?? (p.default * 4 || 10);
  if (max - min > 1000) max = Math.max(p.default * 4, min + 10);
  const step = p.type === "int" ? 1 : Math.max(0.001, Number(((max - min) / 200).toPrecision(1)));
  return { min, max, step };
}

function paramControl(effect, p) {
  const onChange = () => schedulePreview(effect.name);
  let control;
  if (p.choices) {
    control = el("select", { "data-key": p.key, onchange: () => { updateVisibility(effect); onChange(); } }, p.choices.map((c) => el("option", { value: c, selected: c === p.default }, c)));
    return el("div", { class: "param", title: p.help }, el("span", { class: "key" }, p.key), control, el("span"));
  }
  if (p.type === "bool") {
    control = el("input", { type: "checkbox", "data-key": p.key, checked: p.default, onchange: onChange });
    return el("div", { class: "param", title: p.help }, el("span", { class: "key" }, p.key), control, el("span"));
  }
  if (p.type === "str") {
    control = el("input", { "data-key": p.key, value: p.default, onchange: onChange });
    return el("div", { class: "param", title: p.help }, el("span", { class: "key" }, p.key), control, el("span"));
  }
  const r = sliderRange(p);
  const number = el("input", { type: "number", min: p.min, max: p.max, step: r.step, value: p.default });
  const slider = el("input", { type: "range", "data-key": p.key, min: r.min, max: r.max, step: r.step, value: p.default });
  slider.addEventListener("input", () => { number.value = slider.value; onChange(); });
  number.addEventListener("change", () => { slider.value = number.value; slider.dataset.exact = number.value; onChange(); });
  return el("div", { class: "param", title: p.help }, el("span", { class: "key" }, p.key), slider, number);
}

function updateVisibility(effect) {
  const card = $(`.effect-card[data-effect=${effect.name}]`);
  for (const p of effect.params) {
    const control = $(`[data-key=${p.key}]`, card);
    if (control) control.closest(".param").classList.toggle("hidden", !paramVisible(effect, p));
  }
}

function effectParams(effect) {
  const card = $(`.effect-card[data-effect=${effect.name}]`);
  const out = {};
  for (const p of effect.params) {
    const control = $(`[data-key=${p.key}]`, card);
    if (!control || !paramVisible(effect, p)) continue;
    let value;
    if (control.type === "checkbox") value = control.checked;
    else if (control.type === "range") value = Number(control.nextElementSibling.value);
    else value = control.value;
    if (p.type === "int") value = Math.round(Number(value));
    if (value !== p.default) out[p.key] = value;
  }
  return out;
}

function buildEffects(effects) {
  const box = $("#effects");
  for (const effect of effects) {
    state.effects[effect.name] = effect;
    const body = el("div", { class: "effect-body hidden" },
      el("div", { class: "preview-row" },
        el("img", { class: "preview", alt: `${effect.name} edit` }),
        el("div", { class: "params" }, effect.params.map((p) => paramControl(effect, p)))),
      el("div", { class: "verdict" }, el("span", { class: "hint" }, "upload the original to see this edit")));
    const toggle = el("input", { type: "checkbox", class: "effect-toggle" });
    const card = el("div", { class: "effect-card", dataset: { effect: effect.name } },
      el("label", { class: "effect-head" }, toggle, " ", el("b", {}, effect.name), " ", el("span", { class: "hint" }, effect.help || "")), body);
    toggle.addEventListener("change", () => {
      card.classList.toggle("on", toggle.checked);
      body.classList.toggle("hidden", !toggle.checked);
      if (toggle.checked) schedulePreview(effect.name, 0);
    });
    box.append(card);
    updateVisibility(effect);
  }
}

function renderVerdict(box, data) {
  box.textContent = "";
  const cls = { ok: "v-ok", warn: "v-warn", refuse: "v-refuse" }[data.verdict];
  box.append(el("span", { class: cls }, `check: ${data.verdict}`));
  if (data.refusal) box.append(el("div", { class: "error" }, `copymachine: error: ${data.refusal}`));
  for (const w of data.warnings) box.append(el("div", { class: "v-warn" }, `warning: ${w}`));
  for (const n of data.notes) box.append(el("div", { class: "hint" }, n));
  box.append(el("details", {}, el("summary", {}, "measurements"), el("pre", {}, data.report)));
}

function schedulePreview(name, delay) {
  clearTimeout(state.timers[name]);
  state.timers[name] = setTimeout(() => preview(name), delay ?? 150);
}

async function preview(name) {
  const card = $(`.effect-card[data-effect=${name}]`);
  if (!state.original || !$(".effect-toggle", card).checked) return;
  const img = $("img.preview", card), box = $(".verdict", card);
  const body = { image: state.original.path, effect: name, amount: Number($("#amount").value) };
  if (name === "custom") {
    if (!state.edited) return;
    Object.assign(body, { edited: state.edited.path, in_place: $("#edit-in-place").checked });
  } else body.params = effectParams(state.effects[name]);
  const ticket = (state.pending[name] || 0) + 1;
  state.pending[name] = ticket;
  img.classList.add("busy");
  try {
    const data = await post("/api/preview", body);
    if (state.pending[name] !== ticket) return; // a newer slider position is on its way
    if (data.image) img.src = data.image;
    img.dataset.params = JSON.stringify(body.params || {});
    renderVerdict(box, data);
  } catch (e) {
    if (state.pending[name] === ticket) { box.textContent = ""; box.append(el("div", { class: "error" }, `copymachine: error: ${e.message}`)); }
  } finally {
    if (state.pending[name] === ticket) img.classList.remove("busy");
  }
}

function previewAll() {
  for (const card of $$(".effect-card")) if ($(".effect-toggle", card).checked) schedulePreview(card.dataset.effect, 0);
}

function chosenEffects() {
  return $$(".effect-card").filter((c) => $(".effect-toggle", c).checked).map((c) => c.dataset.effect);
}

function collectJob() {
  const val = (id) => $(`#${id}`).value.trim();
  const num = (id) => (val(id) === "" ? null : Number(val(id)));
  const effects = chosenEffects();
  const builtin = effects.filter((e) => e !== "custom");
  const job = { method: val("method"), base: val("base") };
  const source = $("input[name=source]:checked").value;
  const set = {};
  if (source === "upload") {
    if (!state.original) throw new Error("upload the original picture (or choose to generate it)");
    job.image = [state.original.path];
  } else {
    if (val("prompt")) job.prompt = val("prompt");
    set.generate = { seed: num("seed") ?? 1 };
  }
  if (effects.includes("custom")) {
    if (!state.edited) throw new Error("custom: upload your edit of the original");
    job.edited = [state.edited.path];
    if ($("#edit-in-place").checked) job["edit-in-place"] = true;
  }
  if (effects.length) job.effect = effects;
  for (const e of builtin) {
    const params = effectParams(state.effects[e]);
    if (Object.keys(params).length) set[e] = params;
  }
  const amount = Number($("#amount").value);
  if (amount !== 1 && builtin.length) job.amount = amount;
  if (job.method === "diff") job.sign = val("sign");
  for (const [key, id] of [["name", "name"], ["preview-model", "preview-model"], ["caption", "caption"]]) if (val(id)) job[key] = val(id);
  for (const [key, id] of [["max-steps", "max-steps"], ["resolution", "resolution"], ["rank", "rank"]]) if (num(id) !== null) job[key] = num(id);
  if ($("#no-copy-check").checked) job["no-copy-check"] = true;
  const lines = val("sets").split("\n").map((s) => s.trim()).filter(Boolean);
  for (const line of lines) {
    const [name, ...rest] = line.split("=");
    const dot = name.lastIndexOf(".");
    if (!rest.length || dot < 1) throw new Error(`--set expects section.key=value (e.g. copy.network_dim=32), not '${line}'`);
    const section = name.slice(0, dot).trim(), key = name.slice(dot + 1).trim();
    (set[section] = set[section] || {})[key] = rest.join("=").trim();
  }
  if (Object.keys(set).length) job.set = set;
  return job;
}

async function addJob() {
  const box = $("#add-message");
  box.textContent = "";
  try {
    const data = await post("/api/jobs", collectJob());
    box.append(el("div", { class: "success" }, `added job ${data.id} (${data.label}) to the queue `, el("a", { href: "#queue" }, "see the queue")));
    refreshJobs();
  } catch (e) {
    box.append(el("div", { class: "error" }, `copymachine: error: ${e.message}`));
  }
}

// --- Queue --------------------------------------------------------------------------------
function jobCard(job) {
  const running = job.status === "running";
  const buttons = el("div", { class: "buttons" },
    (running || job.status === "queued") ? el("button", { class: "cancel", onclick: () => action(job.id, "cancel") }, "Cancel") : null,
    ["failed", "cancelled"].includes(job.status) ? el("button", { class: "retry", onclick: () => action(job.id, "retry") }, "Retry") : null,
    el("button", { class: "remove", onclick: () => { if (confirm(`Remove job ${job.id} from the queue? Its run folder stays.`)) action(job.id, "remove"); } }, "Remove"));
  const card = el("div", { class: "job", dataset: { id: job.id, status: job.status } },
    el("div", { class: "job-head" }, el("span", { class: "label" }, `${job.id} · ${job.label}`), el("span", { class: `status ${job.status}` }, job.status),
      el("span", { class: "hint", title: "run it by hand with: copymachine queue " + job.file }, `${job.command || ""} · ${job.file || ""}`), buttons));
  if (job.stages && job.stages.length) card.append(el("ol", { class: "stages" }, job.stages.map((s) => el("li", { class: s.status, title: s.status }, s.title))));
  const p = job.progress;
  if (running && p && p.total) {
    card.append(el("div", { class: "bar" }, el("div", { style: `width:${Math.round((100 * p.step) / p.total)}%` })));
    card.append(el("div", { class: "progress-text" }, p.text || `${p.step}/${p.total}`));
  } else if (running) card.append(el("div", { class: "progress-text" }, "starting…"));
  if (job.sample && job.sample.path) {  // --samples: the latest image a training rendered
    const name = job.sample.path.split(/[\\/]/).pop();
    card.append(el("figure", { class: "sample" }, el("img", { src: "/file?path=" + encodeURIComponent(job.sample.path), alt: name, loading: "lazy" }),
      el("figcaption", { class: "hint" }, `latest sample: ${job.sample.title || ""} · ${name}`)));
  }
  if (job.note && job.status !== "done") card.append(el("div", { class: "hint" }, job.note));
  if (job.message && job.status !== "done") card.append(el("div", { class: "error" }, job.status === "failed" ? `copymachine: error: ${job.message.replace(/^copymachine: error: /, "")}` : job.message));
  if (job.status === "done" && job.finals && job.finals.length) card.append(el("div", { class: "success" }, job.finals.join("\n"), " ", el("a", { href: "#results" }, "see the results")));
  if (job.log_tail && job.log_tail.length && job.status !== "queued") card.append(el("details", { open: running || job.status === "failed" }, el("summary", {}, "log"), el("pre", { class: "log" }, job.log_tail.join("\n"))));
  return card;
}

async function action(id, what) {
  try { await post(`/api/jobs/${id}/${what}`, {}); } catch (e) { alert(e.message); }
  refreshJobs();
}

async function refreshJobs() {
  try {
    const data = await api("/api/jobs");
    const box = $("#jobs");
    const openLogs = new Set($$(".job details[open]").map((d) => d.closest(".job").dataset.id));
    box.textContent = "";
    if (!data.jobs.length) box.append(el("p", { class: "hint" }, "No jobs yet: make one on the Make page."));
    for (const job of data.jobs) {
      const card = jobCard(job);
      const d = $("details", card);
      if (d && openLogs.has(job.id)) d.open = true;
      box.append(card);
      for (const log of $$("pre.log", card)) log.scrollTop = log.scrollHeight; // the tail is what matters
    }
    const active = data.jobs.filter((j) => ["queued", "running"].includes(j.status)).length;
    $("#queue-count").textContent = active ? `(${active})` : "";
    const done = data.jobs.filter((j) => j.status === "done").length;
    if (done !== state.doneCount) { state.doneCount = done; if ((location.hash || "") === "#results") refreshResults(); }
  } catch (e) { /* the server restarting: try again on the next tick */ }
}

// --- Results ------------------------------------------------------------------------------
async function refreshResults() {
  const data = await api("/api/results");
  const box = $("#results");
  box.textContent = "";
  $("#results-count").textContent = data.results.length ? `(${data.results.length})` : "";
  if (!data.results.length) box.append(el("p", { class: "hint" }, "No results yet: finished jobs show their LoRAs here."));
  for (const r of data.results) {
    box.append(el("div", { class: "result", dataset: { name: r.name } },
      el("h3", {}, r.name, " ", el("span", { class: "hint" }, `${r.method || ""} · ${r.effect || ""} · job ${r.job}`)),
      el("div", {}, el("a", { href: r.download, class: "download" }, `Download ${r.name}.safetensors`), " ", el("span", { class: "hint" }, r.path)),
      el("div", { class: "usage" },
        el("div", {}, "A1111 / Forge prompt: ", el("code", {}, r.usage.a1111), " (try 0.5 – 2; less of the edit: ", el("code", {}, r.usage.a1111_less), ")"),
        el("div", {}, "ComfyUI: ", r.usage.comfyui),
        el("div", { class: "hint" }, `sign: ${r.sign}`)),
      el("div", { class: "sheets" }, r.sheets.map((s) => el("figure", {}, el("a", { href: s.url, target: "_blank" }, el("img", { class: "sheet", src: s.url, alt: s.kind, dataset: { kind: s.kind } })), el("figcaption", {}, `${s.kind}: ${s.title}`)))),
      el("details", {}, el("summary", {}, "inspect"), el("pre", { class: "inspect" }, r.inspect))));
  }
}

// the run's limits, from its options' JSON schema (copymachine/options.py)
function applyLimits(schema) {
  for (const id of ["max-steps", "resolution", "rank"]) {
    const field = schema.properties[id.replace("-", "_")];
    const spec = (field.anyOf || [field]).find((s) => s.type === "integer") || {};
    if (spec.minimum !== undefined) $("#" + id).min = spec.minimum;
    if (spec.maximum !== undefined) $("#" + id).max = spec.maximum;
  }
}

// --- start --------------------------------------------------------------------------------
async function start() {
  const info = await api("/api/info");
  state.info = info;
  $("#version").textContent = `copymachine ${info.version} · runs in ${info.runs}`;
  $("#queue-folder").textContent = `${info.runs}/_ui/queue`;
  for (const m of info.models) $("#models").append(el("option", { value: m }));
  buildEffects(info.effects);
  applyLimits(info.options);
  for (const radio of $$("input[name=source]")) radio.addEventListener("change", () => {
    const up = $("input[name=source]:checked").value === "upload";
    $("#source-upload").classList.toggle("hidden", !up);
    $("#source-generate").classList.toggle("hidden", up);
  });
  $("#original-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    try {
      state.original = await upload(file);
      $("#original-img").src = state.original.url;
      $("#original-info").textContent = `${state.original.name} · ${state.original.width}×${state.original.height}`;
      $("#original-box").classList.remove("hidden");
      previewAll();
    } catch (e) { $("#original-info").textContent = `copymachine: error: ${e.message}`; $("#original-box").classList.remove("hidden"); }
  });
  $("#edited-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    const card = $(".effect-card[data-effect=custom]");
    try {
      state.edited = await upload(file);
      $("img.preview", card).src = state.edited.url;
      schedulePreview("custom", 0);
    } catch (e) { $(".verdict", card).textContent = `copymachine: error: ${e.message}`; }
  });
  $("#edit-in-place").addEventListener("change", () => schedulePreview("custom", 0));
  const customToggle = $(".effect-card[data-effect=custom] .effect-toggle");
  customToggle.addEventListener("change", () => {
    const card = customToggle.closest(".effect-card");
    card.classList.toggle("on", customToggle.checked);
    $(".effect-body", card).classList.toggle("hidden", !customToggle.checked);
    schedulePreview("custom", 0);
  });
  $("#amount").addEventListener("input", () => { $("#amount-out").textContent = $("#amount").value; for (const n of Object.keys(state.effects)) schedulePreview(n); });
  $("#method").addEventListener("change", () => $("#sign-box").classList.toggle("hidden", $("#method").value !== "diff"));
  $("#add").addEventListener("click", addJob);
  showPage();
  refreshJobs();
  setInterval(refreshJobs, 1000);
}
start();
