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

// the server's state as this page last saw it: "ok", "down" (not answering) or "token" (restarted: a new token)
function setConnection(what) {
  if (state.connection === what) return;
  state.connection = what;
  const box = $("#connection");
  box.textContent = "";
  box.classList.toggle("hidden", what === "ok");
  $("#jobs").classList.toggle("stale", what !== "ok");
  if (what === "down") box.append(`The UI is not answering (stopped or restarting) since ${new Date().toLocaleTimeString()}: the queue below is as it was then. Start it again with `, el("code", {}, "copymachine ui"), " and open the address it prints.");
  if (what === "token") box.append("The UI was restarted: this page's token is no longer valid. Open the new address ", el("code", {}, "copymachine ui"), " printed in its terminal (the line ", el("code", {}, "copymachine ui: http://…/?token=…"), ").");
}

async function api(path, options) {
  let response;
  try { response = await fetch(path, options); } catch (e) { setConnection("down"); throw new Error("the UI is not answering (stopped or restarting)"); }
  if (response.status === 304) { setConnection("ok"); return null; }
  const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (response.status === 403 && /no valid token/.test(data.error || "")) setConnection("token");
  else setConnection("ok");
  if (!response.ok || data.error) throw new Error(data.error || response.statusText);
  if (options && options.etag) state.etag = response.headers.get("ETag");
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
  if (!file.type.startsWith("image/")) throw new Error(`${file.name} is not a picture: upload a PNG, JPEG or WebP image`);
  return api("/api/upload", { method: "POST", headers: { "X-Filename": encodeURIComponent(file.name), "Content-Type": file.type }, body: file });
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
  const name = `${effect.name} ${p.key}`;
  let control;
  if (p.choices) {
    control = el("select", { "data-key": p.key, "aria-label": name, onchange: () => { updateVisibility(effect); onChange(); } }, p.choices.map((c) => el("option", { value: c, selected: c === p.default }, c)));
    return el("div", { class: "param", title: p.help }, el("span", { class: "key" }, p.key), control, el("span"));
  }
  if (p.type === "bool") {
    control = el("input", { type: "checkbox", "data-key": p.key, "aria-label": name, checked: p.default, onchange: onChange });
    return el("div", { class: "param", title: p.help }, el("span", { class: "key" }, p.key), control, el("span"));
  }
  if (p.type === "str") {
    control = el("input", { "data-key": p.key, "aria-label": name, value: p.default, onchange: onChange });
    return el("div", { class: "param", title: p.help }, el("span", { class: "key" }, p.key), control, el("span"));
  }
  const r = sliderRange(p);
  const number = el("input", { type: "number", "aria-label": `${name} (number)`, min: p.min, max: p.max, step: r.step, value: p.default });
  const slider = el("input", { type: "range", "data-key": p.key, "aria-label": name, min: r.min, max: r.max, step: r.step, value: p.default });
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
  const box = $("#add-message"), button = $("#add");
  box.textContent = "";
  button.disabled = true;  // one job per click: a double click adds nothing more
  try {
    const data = await post("/api/jobs", collectJob());
    box.append(el("div", { class: "success" }, `added job ${data.id} (${data.label}) to the queue `, el("a", { href: "#queue" }, "see the queue")));
    refreshJobs();
  } catch (e) {
    box.append(el("div", { class: "error", role: "alert" }, `copymachine: error: ${e.message}`));
  } finally { button.disabled = false; }
}

// --- Queue: each job's card is parts, each replaced only when what it shows changed ---------
function duration(s) {
  if (s === null || s === undefined) return "";
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function jobParts(job) {
  const running = job.status === "running", p = job.progress, o = job.overall;
  const parts = [["head", [job.status, job.label], () => el("div", { class: "job-head" },
    el("span", { class: "label" }, `${job.id} · ${job.label}`), el("span", { class: `status ${job.status}` }, job.status),
    el("span", { class: "hint", title: "run it by hand with: copymachine queue " + job.file }, `${job.command || ""} · ${job.file || ""}`),
    el("div", { class: "buttons" },
      (running || job.status === "queued") ? el("button", { class: "cancel", "aria-label": `Cancel job ${job.id}`, onclick: () => action(job.id, "cancel") }, "Cancel") : null,
      ["failed", "cancelled"].includes(job.status) ? el("button", { class: "retry", "aria-label": `Retry job ${job.id}`, onclick: () => action(job.id, "retry") }, "Retry") : null,
      el("button", { class: "remove", "aria-label": `Remove job ${job.id}`, onclick: () => { if (confirm(`Remove job ${job.id} from the queue? Its run folder stays.`)) action(job.id, "remove"); } }, "Remove")))]];
  if (job.stages && job.stages.length) parts.push(["stages", job.stages.map((s) => s.status), () => el("ol", { class: "stages" }, job.stages.map((s) => el("li", { class: s.status, title: s.status }, s.title)))]);
  if (running && o && o.stages) {
    const eta = o.seconds_left === null ? "" : ` · about ${duration(o.seconds_left)} left`;
    parts.push(["overall", [o.finished, o.stages, o.seconds_left], () => el("div", { class: "overall" },
      el("progress", { max: o.stages, value: o.finished, "aria-label": `job ${job.id}: stages finished` }), ` job: ${o.finished}/${o.stages} stages${eta}`)]);
  }
  if (running) parts.push(["progress", p, () => (p && p.total)
    ? el("div", {}, el("div", { class: "bar" }, el("div", { style: `width:${Math.round((100 * p.step) / p.total)}%` })), el("div", { class: "progress-text" }, p.text || `${p.step}/${p.total}`))
    : el("div", { class: "progress-text" }, "starting…")]);
  if (job.sample && job.sample.path) {  // --samples: the latest image a training rendered
    const name = job.sample.path.split(/[\\/]/).pop();
    parts.push(["sample", job.sample, () => el("figure", { class: "sample" }, el("img", { src: "/file?path=" + encodeURIComponent(job.sample.path), alt: name, loading: "lazy" }),
      el("figcaption", { class: "hint" }, `latest sample: ${job.sample.title || ""} · ${name}`))]);
  }
  if (job.note && job.status !== "done") parts.push(["note", job.note, () => el("div", { class: "hint" }, job.note)]);
  if (job.message && job.status !== "done") parts.push(["message", [job.status, job.message], () => el("div", { class: "error" }, job.status === "failed" ? `copymachine: error: ${job.message.replace(/^copymachine: error: /, "")}` : job.message)]);
  if (job.status === "done" && job.finals && job.finals.length) parts.push(["finals", job.finals, () => el("div", { class: "success" }, job.finals.join("\n"), " ", el("a", { href: "#results" }, "see the results"))]);
  if (job.log_tail && job.log_tail.length && job.status !== "queued") parts.push(["log", running || job.status === "failed", () => el("details", { open: running || job.status === "failed" }, el("summary", {}, "log"), el("pre", { class: "log", tabindex: 0, "aria-label": `job ${job.id}: log` }))]);
  return parts;
}

// the text of an open log, its scroll and a selection in it kept: stuck to the end only when it was there
function updateLog(pre, lines) {
  const text = lines.join("\n");
  if (pre.textContent === text) return;
  const sel = window.getSelection();
  if (sel && !sel.isCollapsed && pre.contains(sel.anchorNode)) return;  // the user is copying from it
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4 || !pre.textContent;
  const top = pre.scrollTop;
  pre.textContent = text;
  pre.scrollTop = atEnd ? pre.scrollHeight : top;
}

function updateCard(card, job) {
  card.dataset.status = job.status;
  const seen = new Set();
  let before = null;
  for (const [name, sig, build] of jobParts(job)) {
    seen.add(name);
    const key = JSON.stringify(sig);
    let part = card.querySelector(`:scope > [data-part=${name}]`);
    const sel = window.getSelection();
    const holding = part && sel && !sel.isCollapsed && part.contains(sel.anchorNode) && name !== "head";
    if (!part || (part.dataset.sig !== key && !holding && name !== "log")) {
      const fresh = build();
      fresh.dataset.part = name;
      fresh.dataset.sig = key;
      if (part) part.replaceWith(fresh); else if (before) before.after(fresh); else card.prepend(fresh);
      part = fresh;
    }
    if (name === "log") updateLog($("pre", part), job.log_tail);
    before = part;
  }
  for (const part of $$(":scope > [data-part]", card)) if (!seen.has(part.dataset.part)) part.remove();
}

async function action(id, what) {
  try { await post(`/api/jobs/${id}/${what}`, {}); } catch (e) { alert(e.message); }
  refreshJobs();
}

async function refreshJobs() {
  let data;
  try {
    data = await api("/api/jobs", { cache: "no-store", etag: true, headers: state.etag ? { "If-None-Match": state.etag } : {} });
  } catch (e) { return; }  // shown by the connection banner; tried again on the next tick
  if (!data) return;  // 304: nothing changed
  const box = $("#jobs");
  $("#no-jobs").classList.toggle("hidden", data.jobs.length > 0);
  const ids = new Set(data.jobs.map((j) => j.id));
  for (const card of $$(".job", box)) if (!ids.has(card.dataset.id)) card.remove();
  let before = null;
  for (const job of data.jobs) {
    let card = box.querySelector(`.job[data-id="${job.id}"]`);
    if (!card) {
      card = el("div", { class: "job", dataset: { id: job.id } });
      if (before) before.after(card); else box.prepend(card);
    }
    updateCard(card, job);
    before = card;
  }
  const active = data.jobs.filter((j) => ["queued", "running"].includes(j.status)).length;
  $("#queue-count").textContent = active ? `(${active})` : "";
  const done = data.jobs.filter((j) => j.status === "done").length;
  if (done !== state.doneCount) { state.doneCount = done; if ((location.hash || "") === "#results") refreshResults(); }
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
  for (const m of info.models) $("#models").append(el("option", { value: m.path, label: `${m.family} · ${m.path.split(/[\\/]/).pop()}` }));
  $("#model-folders").textContent = info.model_folders.length ? `Models from ${info.model_folders.join(", ")}; a model linked into one of them is accepted.` : "No models folder: a model must lie under the runs folder.";
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
      const scaled = state.original.preview[0] < state.original.width ? ` (previews at ${state.original.preview.join("×")})` : "";
      $("#original-info").textContent = `${state.original.name} · ${state.original.width}×${state.original.height}${scaled}`;
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
