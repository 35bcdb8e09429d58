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
        el("img", { class: "preview zoom", alt: `${effect.name} edit`, tabindex: 0, role: "button", "aria-label": `enlarge the ${effect.name} preview` }),
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

const generating = () => $("input[name=source]:checked").value === "generate";

// with "generate" chosen the original is made when the job runs: no preview shows the uploaded picture's edit
function clearPreviews() {
  for (const card of $$(".effect-card")) {
    const img = $("img.preview", card), box = $(".verdict", card);
    img.removeAttribute("src");
    delete img.dataset.params;
    box.textContent = "";
    box.append(el("span", { class: "hint" }, "no preview: the original is generated when the job runs"));
  }
}

async function preview(name) {
  const card = $(`.effect-card[data-effect=${name}]`);
  if (!state.original || generating() || !$(".effect-toggle", card).checked) return;
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
    if (state.pending[name] !== ticket || generating()) return; // a newer slider position is on its way
    if (data.image) img.src = data.image;
    img.dataset.params = JSON.stringify(body.params || {});
    renderVerdict(box, data);
  } catch (e) {
    if (state.pending[name] === ticket) { box.textContent = ""; box.append(el("div", { class: "error" }, `copymachine: error: ${e.message}`)); }
  } finally {
    if (state.pending[name] === ticket) img.classList.remove("busy");
  }
}

function showSource() {
  const up = !generating();
  $("#source-upload").classList.toggle("hidden", !up);
  $("#source-generate").classList.toggle("hidden", up);
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
  for (const id of ["max-steps", "resolution", "rank", "samples"]) if (num(id) !== null) job[id] = num(id);
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

// the field a refusal is about (the server's one-line message), where it can be told
function fieldOf(m) {
  const effect = m.match(/^(\w+): (\w+)=/);
  if (effect && state.effects[effect[1]]) return $(`.effect-card[data-effect=${effect[1]}] [data-key=${effect[2]}]`);
  const rules = [[/^(base model|give the base|base )/, "base"], [/^(preview model|preview-model )/, "preview-model"],
    [/^(edited image|your edit|edited |custom: )/, "edited-file"], [/^(image|upload the original)/, "original-file"],
    [/^unknown effect/, "effects"], [/^(--set|unknown recipe section)/, "sets"],
    [/^(max-steps|resolution|rank|samples|caption|name|sign|prompt|seed):/, null]];
  for (const [re, id] of rules) { const hit = m.match(re); if (hit) return $("#" + (id || hit[1])); }
  return null;
}

function showFieldError(message) {
  const field = fieldOf(message);
  if (!field) return;
  const note = el("div", { class: "field-error", id: `error-${field.id || "param"}`, role: "alert" }, message);
  const details = field.closest("details");
  if (details) details.open = true;
  field.setAttribute("aria-invalid", "true");
  field.setAttribute("aria-describedby", note.id);
  (field.closest(".param") || field.closest("label") || field).after(note);
}

function clearFieldErrors() {
  for (const note of $$(".field-error")) note.remove();
  for (const field of $$("[aria-invalid]")) { field.removeAttribute("aria-invalid"); field.removeAttribute("aria-describedby"); }
}

async function addJob() {
  const box = $("#add-message"), button = $("#add");
  box.textContent = "";
  clearFieldErrors();
  button.disabled = true;  // one job per click: a double click adds nothing more
  try {
    const data = await post("/api/jobs", collectJob());
    box.append(el("div", { class: "success" }, `added job ${data.id} (${data.label}) to the queue `, el("a", { href: "#queue" }, "see the queue")));
    refreshJobs();
  } catch (e) {
    box.append(el("div", { class: "error", role: "alert" }, `copymachine: error: ${e.message.replace(/^\S+\.toml\.tmp: /, "")}`));  // not the scratch file's name
    showFieldError(e.message);
  } finally { button.disabled = false; }
}

// --- the Make form: kept in localStorage across reloads, and filled from a job (Duplicate) -----
const FORM_FIELDS = ["base", "prompt", "seed", "amount", "method", "sign", "name", "preview-model", "max-steps", "resolution", "rank", "samples", "caption", "sets"];
const FORM_CHECKS = ["no-copy-check", "edit-in-place"];
const FORM_KEY = "copymachine.form";

function formSnapshot() {
  const effects = {};
  for (const card of $$(".effect-card")) {
    const params = {};
    for (const c of $$("[data-key]", card)) params[c.dataset.key] = c.type === "checkbox" ? c.checked : c.type === "range" ? c.nextElementSibling.value : c.value;
    effects[card.dataset.effect] = { on: $(".effect-toggle", card).checked, params };
  }
  return { fields: Object.fromEntries(FORM_FIELDS.map((id) => [id, $("#" + id).value])), checks: Object.fromEntries(FORM_CHECKS.map((id) => [id, $("#" + id).checked])),
    source: $("input[name=source]:checked").value, effects, original: state.original, edited: state.edited };
}

function saveForm() {
  clearTimeout(state.timers.form);
  state.timers.form = setTimeout(() => { try { localStorage.setItem(FORM_KEY, JSON.stringify(formSnapshot())); } catch (e) { /* storage full or off: the form is not kept */ } }, 200);
}

function setOriginal(original) {
  state.original = original || null;
  $("#original-box").classList.toggle("hidden", !original);
  if (!original) return;
  $("#original-img").src = original.url;
  const size = original.width ? ` · ${original.width}×${original.height}` : "";
  const scaled = original.preview && original.preview[0] < original.width ? ` (previews at ${original.preview.join("×")})` : "";
  $("#original-info").textContent = `${original.name}${size}${scaled}`;
}

function restoreForm(snap) {
  for (const [id, v] of Object.entries(snap.fields || {})) if ($("#" + id) && v !== undefined && v !== null) $("#" + id).value = v;
  for (const [id, v] of Object.entries(snap.checks || {})) if ($("#" + id)) $("#" + id).checked = !!v;
  $("#amount-out").textContent = $("#amount").value;
  $(`input[name=source][value=${snap.source === "generate" ? "generate" : "upload"}]`).checked = true;
  showSource();
  $("#sign-box").classList.toggle("hidden", $("#method").value !== "diff");
  for (const card of $$(".effect-card")) {
    const saved = (snap.effects || {})[card.dataset.effect] || { on: false, params: {} };
    const toggle = $(".effect-toggle", card);
    toggle.checked = !!saved.on;
    card.classList.toggle("on", toggle.checked);
    $(".effect-body", card).classList.toggle("hidden", !toggle.checked);
    for (const c of $$("[data-key]", card)) {
      const v = (saved.params || {})[c.dataset.key];
      if (v === undefined) continue;
      if (c.type === "checkbox") c.checked = !!v; else c.value = v;
      if (c.type === "range") c.nextElementSibling.value = v;
    }
    if (state.effects[card.dataset.effect]) updateVisibility(state.effects[card.dataset.effect]);
  }
  setOriginal(snap.original);
  state.edited = snap.edited || null;
  const custom = $(".effect-card[data-effect=custom] img.preview");
  if (state.edited) custom.src = state.edited.url; else custom.removeAttribute("src");
  if (generating()) clearPreviews(); else previewAll();
}

// a job's table (its jobs file) as the form shows it
function jobToForm(job) {
  const fields = Object.fromEntries(FORM_FIELDS.map((id) => [id, ""]));
  Object.assign(fields, { seed: "1", amount: String(job.amount ?? 1), method: job.method || "train", sign: job.sign || "edit" });
  for (const id of ["base", "prompt", "name", "preview-model", "caption", "max-steps", "resolution", "rank", "samples"]) if (job[id] !== undefined) fields[id] = String(job[id]);
  const set = JSON.parse(JSON.stringify(job.set || {}));
  if (set.generate && set.generate.seed !== undefined) { fields.seed = String(set.generate.seed); delete set.generate.seed; }
  const chosen = [].concat(job.effect || []);
  const effects = {};
  for (const name of [...Object.keys(state.effects), "custom"]) {
    const on = chosen.includes(name) || (chosen.includes("all") && name !== "custom");
    effects[name] = { on, params: set[name] || {} };
    delete set[name];
  }
  fields.sets = Object.entries(set).flatMap(([section, keys]) => Object.entries(keys).map(([k, v]) => `${section}.${k}=${v}`)).join("\n");
  const file = (path) => path && { path, url: "/file?path=" + encodeURIComponent(path), name: path.split(/[\\/]/).pop() };
  return { fields, checks: { "no-copy-check": !!job["no-copy-check"], "edit-in-place": !!job["edit-in-place"] }, effects,
    source: job.image && job.image.length ? "upload" : "generate", original: file((job.image || [])[0]), edited: file((job.edited || [])[0]) };
}

async function duplicate(id) {
  try {
    restoreForm(jobToForm(await api(`/api/jobs/${id}/form`)));
    saveForm();
    location.hash = "#make";
    $("#add-message").textContent = "";
    $("#add-message").append(el("div", { class: "success" }, `job ${id}'s settings are in the form: change what you like, then Add to queue`));
  } catch (e) { alert(e.message); }
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
      el("button", { class: "duplicate", "aria-label": `Duplicate job ${job.id} into the form`, onclick: () => duplicate(job.id) }, "Duplicate"),
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
  const trained = (job.stages || []).filter((s) => s.loss && s.loss.length > 1);
  if (trained.length) parts.push(["losses", trained.map((s) => s.loss), () => el("div", { class: "losses" }, trained.map(lossChart))]);
  const samples = (job.samples || []).slice(-SAMPLES_SHOWN);
  if (samples.length) parts.push(["samples", samples, () => el("div", { class: "samples" },  // --samples: as each is rendered
    el("div", { class: "hint" }, `samples (${job.samples.length}${job.samples.length > samples.length ? `, the latest ${samples.length}` : ""}):`),
    samples.map((smp) => { const name = smp.path.split(/[\\/]/).pop(); const url = "/file?path=" + encodeURIComponent(smp.path);
      return el("figure", {}, el("a", { href: url, class: "zoom", "aria-label": `enlarge sample ${name}` }, el("img", { src: url, alt: `${smp.title}: ${name}`, loading: "lazy" })),
        el("figcaption", { class: "hint" }, `${smp.title || ""} · ${name}`)); }))]);
  if (job.note && job.status !== "done") parts.push(["note", job.note, () => el("div", { class: "hint" }, job.note)]);
  if (job.message && job.status !== "done") parts.push(["message", [job.status, job.message], () => el("div", { class: "error" }, job.status === "failed" ? `copymachine: error: ${job.message.replace(/^copymachine: error: /, "")}` : job.message)]);
  if (job.status === "done" && job.finals && job.finals.length) parts.push(["finals", job.finals, () => el("div", { class: "success" }, job.finals.join("\n"), " ", el("a", { href: "#results" }, "see the results"))]);
  if (job.log_tail && job.log_tail.length && job.status !== "queued") parts.push(["log", running || job.status === "failed", () => el("details", { open: running || job.status === "failed" }, el("summary", {}, "log"), el("pre", { class: "log", tabindex: 0, "aria-label": `job ${job.id}: log` }))]);
  return parts;
}

// a training's loss by step: a small SVG line, its first and last values and its range written out
const SAMPLES_SHOWN = 8;
function lossChart(stage) {
  const W = 240, H = 64, pts = stage.loss, steps = pts.map((p) => p[0]), losses = pts.map((p) => p[1]);
  const x0 = Math.min(...steps), x1 = Math.max(...steps), lo = Math.min(...losses), hi = Math.max(...losses);
  const x = (v) => ((v - x0) / (x1 - x0 || 1)) * (W - 4) + 2, y = (v) => H - 2 - ((v - lo) / (hi - lo || 1)) * (H - 4);
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  const last = pts[pts.length - 1], summary = `loss of ${stage.title}: ${losses[0].toPrecision(3)} at step ${x0}, ${last[1].toPrecision(3)} at step ${last[0]} (range ${lo.toPrecision(3)}–${hi.toPrecision(3)})`;
  for (const [k, v] of Object.entries({ viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": summary, class: "loss" })) svg.setAttribute(k, v);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
  svg.append(line);
  return el("figure", { class: "loss-chart", dataset: { stage: stage.title } }, svg, el("figcaption", { class: "hint" }, summary));
}

// the text of an open log, its scroll and a selection in it kept: stuck to the end only when it was there
function updateLog(pre, lines) {
  const text = lines.join("\n");
  if (pre.textContent === text) return;
  const sel = window.getSelection();
  if (sel && !sel.isCollapsed && pre.contains(sel.anchorNode)) return;  // the user is copying from it
  // follow the end unless the user scrolled up while the text overflowed; a shorter text (the next stage's
  // log) that fits the box keeps that choice, so the box does not start following again on its own
  if (pre.scrollHeight > pre.clientHeight + 4) pre.dataset.follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4 ? "1" : "";
  const top = pre.scrollTop;
  pre.textContent = text;
  pre.scrollTop = pre.dataset.follow !== "" ? pre.scrollHeight : top;
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
  for (const r of data.results) box.append(resultCard(r));
}

function resultCard(r) {
  const message = el("div", { class: "result-message", role: "status" });
  const folders = (state.info && state.info.lora_folders) || [];
  const folder = folders.length ? el("select", { class: "lora-folder", "aria-label": `LoRA folder to copy ${r.name} into` }, folders.map((f) => el("option", { value: f }, f))) : null;
  const act = async (what, body, done) => {
    message.textContent = "";
    try { done(await post(`/api/results/${what}`, { path: r.path, ...body })); } catch (e) { message.append(el("div", { class: "error" }, `copymachine: error: ${e.message}`)); }
  };
  const jobs = r.jobs && r.jobs.length > 1 ? `jobs ${r.jobs.join(", ")}` : `job ${r.job}`;
  return el("div", { class: "result", dataset: { name: r.name } },
    el("h3", {}, r.name, " ", el("span", { class: "hint" }, `${r.method || ""} · ${r.effect || ""} · made by ${jobs}`)),
    el("div", {}, el("a", { href: r.download, class: "download" }, `Download ${r.name}.safetensors`), " ", el("span", { class: "hint" }, r.path)),
    el("div", { class: "result-actions" },
      folder ? [folder, el("button", { class: "copy", onclick: () => act("copy", { folder: folder.value }, (d) => message.append(el("div", { class: "success" }, `copied to ${d.copy}`))) }, "Copy to folder…")]
        : el("span", { class: "hint" }, "Copy to folder: no LoRA folder known; start the UI with --loras DIR (or COPYMACHINE_LORAS)."),
      el("button", { class: "delete", onclick: () => { if (confirm(`Delete ${r.name}.safetensors? It is moved to the trash folder ${state.info.runs}/_trash.`)) act("delete", {}, () => refreshResults()); } }, "Delete")),
    message,
    el("div", { class: "usage" },
      el("div", {}, "A1111 / Forge prompt: ", el("code", {}, r.usage.a1111), " (try 0.5 – 2; less of the edit: ", el("code", {}, r.usage.a1111_less), ")"),
      el("div", {}, "ComfyUI: ", r.usage.comfyui),
      el("div", { class: "hint" }, `sign: ${r.sign}`)),
    el("div", { class: "sheets" }, r.sheets.map((sh) => el("figure", {}, el("a", { href: sh.url, class: "zoom", "aria-label": `enlarge ${sh.kind}: ${sh.title}` }, el("img", { class: "sheet", src: sh.url, alt: sh.kind, dataset: { kind: sh.kind } })), el("figcaption", {}, `${sh.kind}: ${sh.title}`)))),
    el("details", {}, el("summary", {}, "inspect"), el("pre", { class: "inspect" }, r.inspect)));
}

// --- the lightbox: a sheet, a sample or a preview enlarged (click or Enter; Esc, a click or Close shut it) --
function openLightbox(opener) {
  const img = opener.tagName === "IMG" ? opener : $("img", opener);
  if (!img || !img.getAttribute("src")) return false;
  const box = $("#lightbox");
  $("#lightbox-img").src = opener.tagName === "A" ? opener.href : img.src;
  $("#lightbox-img").alt = img.alt;
  $("#lightbox-caption").textContent = img.alt;
  state.lightboxOpener = opener;
  box.showModal();
  $("#lightbox-close").focus();
  return true;
}

function setupLightbox() {
  const box = $("#lightbox");
  document.addEventListener("click", (ev) => {
    const opener = ev.target.closest(".zoom");
    if (opener && !ev.ctrlKey && !ev.metaKey && !ev.shiftKey && openLightbox(opener)) ev.preventDefault();
  });
  document.addEventListener("keydown", (ev) => {
    if ((ev.key === "Enter" || ev.key === " ") && ev.target.matches && ev.target.matches("img.zoom") && openLightbox(ev.target)) ev.preventDefault();
  });
  box.addEventListener("click", () => box.close());  // the picture, the backdrop or Close
  box.addEventListener("close", () => { if (state.lightboxOpener && state.lightboxOpener.isConnected) state.lightboxOpener.focus(); });
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
  $("#lora-folders").textContent = info.lora_folders.length ? `Copy to folder… copies a LoRA into one of: ${info.lora_folders.join(", ")}.` : "Copy to folder…: no LoRA folder known. Start the UI with --loras DIR (repeat it for several) or COPYMACHINE_LORAS=DIR1:DIR2; the A1111/Forge models/Lora and ComfyUI models/loras beside the model folders are added.";
  buildEffects(info.effects);
  applyLimits(info.options);
  for (const radio of $$("input[name=source]")) radio.addEventListener("change", () => { showSource(); if (generating()) clearPreviews(); else previewAll(); });
  $("#original-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    try {
      setOriginal(await upload(file));
      saveForm();
      previewAll();
    } catch (e) { $("#original-info").textContent = `copymachine: error: ${e.message}`; $("#original-box").classList.remove("hidden"); }
  });
  $("#edited-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    const card = $(".effect-card[data-effect=custom]");
    try {
      state.edited = await upload(file);
      saveForm();
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
  setupLightbox();
  for (const kind of ["input", "change"]) $("#page-make").addEventListener(kind, saveForm);
  try { const saved = JSON.parse(localStorage.getItem(FORM_KEY) || "null"); if (saved) restoreForm(saved); } catch (e) { /* a form of another version: start afresh */ }
  showPage();
  refreshJobs();
  setInterval(refreshJobs, 1000);
}
start();
