// The playground's script: no framework, no build step, nothing from another site.
//
// The form's controls are named after the API's fields. `collect` reads each by its kind
// (radio group, checkbox, number, text/select, or an image field: a file or a URL) and keeps it
// only when it differs from its default: the schema's default from /playground/config, else the
// value the page was written with. So a field the API learns later (output_size, composite) is
// sent only once someone changes it, and adding a field is adding a control.
//
// Two job forms build a list: an outfit (a second garment, its controls named by their path in
// the request, `garments.1.garment`; the top-level garment fields become item 0) and a catalog
// (house models picked as checkboxes: `person_index` becomes a list).
//
// Jobs go through the routes a client uses: on the local queue endpoint POST .../run, then
// .../stream (progress updates, each once) until the job ends, then .../status; on a
// load-balancing endpoint one POST /tryon, which answers when the job is done.
"use strict";

const KEY_STORAGE = "ootd-worker.api-key";
const POLL_MS = 400;
const FINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]);
const STATES = {
  IN_QUEUE: "In the queue",
  IN_PROGRESS: "Running",
  COMPLETED: "Done",
  FAILED: "Failed",
  CANCELLED: "Cancelled",
  TIMED_OUT: "Timed out",
};
const LABELS = {
  auto: "auto (detect)",
  hd: "HD (upper body)",
  dc: "DC (upper, lower, dress)",
  lower_first: "lower body first",
  upper_first: "upper body first",
};

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
const form = $("#tryon");

const state = {
  config: null,
  defaults: new Map(),
  images: {},          // field -> {value: data URI, url: object URL for showing it}
  houseImages: new Map(), // person_index -> object URL of the full photo
  pasteTarget: "garment",
  busy: false,
  job: null,           // {id} on the queue endpoint, {abort} on the load-balancing one
  started: 0,
  timer: 0,
  lastStatus: "",
};

// ---------------------------------------------------------------- start

async function init() {
  try {
    const response = await fetch("/playground/config");
    state.config = await response.json();
  } catch (error) {
    showError(`cannot reach the worker: ${error.message}`);
    return;
  }
  describeEndpoint();
  setupKey();
  fillChoices();
  setDefaults();
  setupImages();
  form.addEventListener("submit", onSubmit);
  form.addEventListener("input", showRequest);
  form.addEventListener("change", showRequest);
  $("#cancel").addEventListener("click", onCancel);
  $("#results").addEventListener("input", onSlider);
  $("#summary").addEventListener("click", onUseSeed);
  $("#add-garment").addEventListener("click", () => showSecondGarment(true));
  $("#remove-garment").addEventListener("click", () => showSecondGarment(false));
  $("#catalog").addEventListener("change", onCatalogMode);
  for (const button of $$("[data-clear]")) {
    button.addEventListener("click", () => clearImage(button.dataset.clear));
  }
  await loadHouseModels();
  showRequest();
}

function describeEndpoint() {
  const { mode, routes } = state.config;
  $("#endpoint").textContent = mode === "lb"
    ? `load-balancing endpoint: POST ${routes.tryon}`
    : `queue endpoint: POST ${routes.run}`;
}

function setupKey() {
  if (!state.config.key_required) return;
  const box = $("#key-box");
  const input = $("#api-key");
  box.hidden = false;
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  input.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, input.value.trim());
    setFieldError("api-key", "");
    loadHouseModels();
  });
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// ---------------------------------------------------------------- fields

function fieldNames() {
  return [...new Set($$("[name]", form).map((control) => control.name))];
}

function isImageField(name) {
  return Boolean($(`[data-image="${name}"]`, form));
}

// The field a path ends in: `garments.1.category` -> `category`.
function leaf(name) {
  return name.split(".").pop();
}

function fillChoices() {
  const choices = state.config.fields.choices;
  for (const select of $$("select[name]", form)) {
    const values = choices[select.name] || choices[leaf(select.name)];
    if (!values) continue; // a field the schema does not list: the page's own options
    select.replaceChildren(...values.map((value) => new Option(LABELS[value] || value.replaceAll("_", " "), value)));
  }
}

function setDefaults() {
  const { defaults, ranges } = state.config.fields;
  for (const name of fieldNames()) {
    if (isImageField(name)) continue;
    const controls = $$(`[name="${name}"]`, form);
    const control = controls[0];
    if (control.type === "radio") continue;
    const range = ranges[name];
    if (range && control.type === "number") {
      control.min = String(range[0]);
      control.max = String(range[1]);
    }
    if (control.dataset.default !== undefined) writeControl(control, control.dataset.default);
    else if (name in defaults) writeControl(control, defaults[name]);
    const value = readField(name);
    if (value !== undefined) state.defaults.set(name, value);
  }
}

function writeControl(control, value) {
  if (control.type === "checkbox") control.checked = Boolean(value);
  else control.value = String(value);
}

// The value of one field as the API takes it, or undefined when it is not set.
function readField(name) {
  if (isImageField(name)) {
    const chosen = state.images[name];
    if (chosen) return chosen.value;
    const url = $(`input[type="text"][name="${name}"]`, form).value.trim();
    return url || undefined;
  }
  const controls = $$(`[name="${name}"]`, form);
  const control = controls[0];
  if (control.type === "radio") {
    const checked = controls.find((radio) => radio.checked);
    return checked ? Number(checked.value) : undefined;
  }
  if (control.dataset.list !== undefined) { // checkboxes that pick several: a list, or one value
    const values = controls.filter((box) => box.checked).map((box) => Number(box.value));
    return values.length > 1 ? values : values[0];
  }
  if (control.type === "checkbox") return control.checked;
  if (control.type === "number") return number(control.value);
  return control.value === "" ? undefined : control.value;
}

// A number input's value; an integer too large for a JS number keeps all its digits.
function number(text) {
  const trimmed = text.trim();
  if (trimmed === "") return undefined;
  const value = Number(trimmed);
  if (/^-?\d+$/.test(trimmed) && !Number.isSafeInteger(value) && JSON.rawJSON) return JSON.rawJSON(trimmed);
  return value;
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

// The job's input: every field that is set and differs from its default; with a second
// garment, the garments as an outfit's list.
function collect() {
  const input = {};
  for (const name of fieldNames()) {
    if (name.startsWith("garments.")) continue;
    const value = readField(name);
    if (value === undefined) continue;
    if (state.defaults.has(name) && same(value, state.defaults.get(name))) continue;
    input[name] = value;
  }
  const second = outfitShown() ? readField("garments.1.garment") : undefined;
  if (second === undefined) {
    delete input.order; // an outfit's field
    return input;
  }
  // Each item names its garment and category; the garment photo type when it was changed (the
  // page's one setting applies to both garments).
  const first = { garment: readField("garment"), category: readField("category") };
  const other = { garment: second, category: readField("garments.1.category") };
  if ("garment_photo_type" in input) first.garment_photo_type = other.garment_photo_type = input.garment_photo_type;
  for (const name of state.config.fields.garment_item) delete input[name]; // item 0's, now inside it
  input.garments = [first, other];
  return input;
}

function outfitShown() {
  return !$("#second-garment").hidden;
}

function showSecondGarment(shown) {
  $("#second-garment").hidden = !shown;
  $("#add-garment").hidden = shown;
  if (!shown) clearImage("garments.1.garment");
  else $("#second-garment .drop").focus();
  showRequest();
}

function showRequest() {
  const { mode, routes } = state.config;
  const route = mode === "lb" ? routes.tryon : routes.run;
  const shown = JSON.stringify({ input: collect() }, (key, value) =>
    typeof value === "string" && value.startsWith("data:") && value.length > 80
      ? `${value.slice(0, value.indexOf(",") + 1)}… (${value.length} characters)`
      : value, 2);
  $("#request").textContent = `POST ${route}\n${shown}`;
}

// ---------------------------------------------------------------- pictures

function setupImages() {
  for (const zone of $$("[data-image]", form)) {
    const name = zone.dataset.image;
    const file = $('input[type="file"]', zone);
    file.addEventListener("change", () => {
      if (file.files[0]) setImageFile(name, file.files[0]);
    });
    zone.addEventListener("focus", () => { state.pasteTarget = name; });
    zone.addEventListener("pointerenter", () => { state.pasteTarget = name; });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const dropped = [...event.dataTransfer.files].find((item) => item.type.startsWith("image/"));
      if (dropped) return setImageFile(name, dropped);
      const url = (event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text/plain")).trim();
      if (url) setImageUrl(name, url.split("\n")[0]);
    });
    const text = $(`input[type="text"][name="${name}"]`, form);
    text.addEventListener("input", () => {
      delete state.images[name];
      file.value = "";
      const url = text.value.trim();
      preview(name, /^https?:\/\//i.test(url) ? url : null);
      if (name === "person" && url) uncheckHouseModels();
    });
  }
  document.addEventListener("paste", onPaste);
}

function onPaste(event) {
  const file = [...(event.clipboardData?.files || [])].find((item) => item.type.startsWith("image/"));
  if (!file) return; // text goes where the caret is
  event.preventDefault();
  setImageFile(state.pasteTarget, file);
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function setImageFile(name, file) {
  const value = await readAsDataUrl(file);
  const old = state.images[name];
  if (old) URL.revokeObjectURL(old.url);
  state.images[name] = { value, url: URL.createObjectURL(file) };
  $(`input[type="text"][name="${name}"]`, form).value = "";
  preview(name, state.images[name].url);
  if (name === "person") uncheckHouseModels();
  setFieldError(name, "");
  showRequest();
}

function setImageUrl(name, url) {
  const text = $(`input[type="text"][name="${name}"]`, form);
  text.value = url;
  text.dispatchEvent(new Event("input", { bubbles: true }));
}

function clearImage(name) {
  const old = state.images[name];
  if (old) URL.revokeObjectURL(old.url);
  delete state.images[name];
  $(`input[type="file"][name="${name}"]`, form).value = "";
  $(`input[type="text"][name="${name}"]`, form).value = "";
  preview(name, null);
  showRequest();
}

function preview(name, url) {
  const image = $(`[data-image="${name}"] .preview`, form);
  image.hidden = !url;
  if (url) image.src = url;
  else image.removeAttribute("src");
}

// Radios pick one house model; in catalog mode checkboxes pick several.
function houseInputType() {
  return $("#catalog").checked ? "checkbox" : "radio";
}

function onCatalogMode() {
  const inputs = $$('input[name="person_index"]', form);
  const first = inputs.find((input) => input.checked);
  // Unchecked before their type changes: a checked box turned radio would uncheck the group's others.
  for (const input of inputs) input.checked = false;
  for (const input of inputs) input.type = houseInputType();
  if (first) first.checked = true;
  $("#house-models").setAttribute("role", houseInputType() === "radio" ? "radiogroup" : "group");
  showRequest();
}

function uncheckHouseModels() {
  for (const radio of $$('input[name="person_index"]', form)) radio.checked = false;
}

async function fetchBlobUrl(url) {
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) throw new Error((await readJson(response)).error || `HTTP ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

async function loadHouseModels() {
  const box = $("#house-models");
  box.replaceChildren();
  setFieldError("person_index", "");
  if (state.config.key_required && !sessionStorage.getItem(KEY_STORAGE)) {
    box.textContent = "Enter the API key to see the house models.";
    return;
  }
  const response = await fetch(state.config.house_models, { headers: authHeaders() });
  const body = await readJson(response);
  if (!response.ok) {
    setFieldError("person_index", body.error || `HTTP ${response.status}`);
    return;
  }
  if (!body.models.length) {
    box.textContent = "This worker has no house model photos (MODEL_IMAGES_DIR).";
    return;
  }
  for (const model of body.models) {
    const label = document.createElement("label");
    label.className = "thumb";
    const radio = document.createElement("input");
    radio.type = houseInputType();
    radio.dataset.list = "";
    radio.name = "person_index";
    radio.value = String(model.index);
    radio.checked = model.index === 0 && !readField("person");
    radio.addEventListener("change", () => {
      clearImage("person");
      showRequest();
    });
    const image = document.createElement("img");
    image.alt = `House model ${model.index}: ${model.name}`;
    const caption = document.createElement("span");
    caption.textContent = `${model.index} · ${model.name}`;
    label.append(radio, image, caption);
    box.append(label);
    fetchBlobUrl(model.thumbnail).then((url) => { image.src = url; }, () => {});
  }
}

// A house model's full photo (object URL), fetched once; null when it cannot be had.
async function houseImage(index) {
  if (!state.houseImages.has(index)) {
    try {
      state.houseImages.set(index, await fetchBlobUrl(`${state.config.house_models}/${index}/image`));
    } catch {
      return null;
    }
  }
  return state.houseImages.get(index);
}

// The photo the results are compared with: the house model, the caller's file or URL (a
// catalog's results each have their own, found when they are shown).
async function beforeImage(input) {
  if (Array.isArray(input.person_index)) return null;
  if (input.person_index !== undefined) return houseImage(input.person_index);
  if (state.images.person) return state.images.person.url;
  return /^(https?:\/\/|data:image\/)/i.test(input.person || "") ? input.person : null;
}

// ---------------------------------------------------------------- running a job

function requestBody(input) {
  return JSON.stringify({ input });
}

// JSON of a response; a seed keeps all its digits (it may be beyond a JS number's precision).
async function readJson(response) {
  const text = await response.text();
  try {
    return JSON.parse(text, (key, value, context) =>
      key === "seed" && typeof value === "number" && !Number.isSafeInteger(value) && context?.source
        ? context.source : value);
  } catch {
    return { error: `HTTP ${response.status}: ${text.slice(0, 200) || response.statusText}` };
  }
}

async function call(url, options = {}) {
  const response = await fetch(url, { ...options, headers: authHeaders(options.headers || {}) });
  return { status: response.status, headers: response.headers, body: await readJson(response) };
}

async function onSubmit(event) {
  event.preventDefault();
  if (state.busy) return;
  clearOutput();
  const input = collect();
  const before = await beforeImage(input);
  setBusy(true);
  try {
    if (state.config.mode === "lb") await runOnLoadBalancer(input, before);
    else await runOnQueue(input, before);
  } catch (error) {
    if (error.name === "AbortError") setStatus("Cancelled");
    else showError(`the request failed: ${error.message}`);
  } finally {
    setBusy(false);
  }
}

async function runOnQueue(input, before) {
  const { routes } = state.config;
  const json = { "Content-Type": "application/json" };
  const submitted = await call(routes.run, { method: "POST", headers: json, body: requestBody(input) });
  if (submitted.status !== 200) return showError(submitted.body.error || `HTTP ${submitted.status}`);
  const id = submitted.body.id;
  state.job = { id };
  setStatus(STATES[submitted.body.status] || submitted.body.status);
  for (;;) {
    await sleep(POLL_MS);
    const polled = await call(`${routes.stream}/${id}`);
    if (polled.status !== 200) return showError(polled.body.error || `HTTP ${polled.status}`);
    for (const chunk of polled.body.stream || []) {
      if (isProgress(chunk.output)) showProgress(chunk.output);
    }
    if (FINAL.has(polled.body.status)) break;
    if (polled.body.status === "IN_QUEUE" || !state.lastStatus.includes("step")) {
      setStatus(STATES[polled.body.status] || polled.body.status);
    }
  }
  const final = await call(`${routes.status}/${id}`);
  const view = final.body;
  setStatus(STATES[view.status] || view.status);
  if (view.status === "COMPLETED") await render(view.output, before, view.executionTime);
  else if (view.error) showError(errorSentence(view.error));
}

async function runOnLoadBalancer(input, before) {
  const abort = new AbortController();
  state.job = { abort };
  setStatus("Waiting for the GPU, then running (this endpoint form reports no steps)");
  const answer = await call(state.config.routes.tryon, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: requestBody(input),
    signal: abort.signal,
  });
  if (answer.status === 200) {
    setStatus("Done");
    await render(answer.body, before, null);
    return;
  }
  setStatus("Failed");
  const retry = answer.headers.get("Retry-After");
  const message = answer.body.error || `HTTP ${answer.status}`;
  showError(retry ? `${message} (Retry-After: ${retry} s)` : message);
}

async function onCancel() {
  const job = state.job;
  if (!job) return;
  if (job.abort) job.abort.abort();
  else await call(`${state.config.routes.cancel}/${job.id}`, { method: "POST" });
}

function isProgress(output) {
  return output && typeof output === "object" && "stage" in output && !("images" in output);
}

// The error of a failed job: the worker's sentence, or the message inside a crash report.
function errorSentence(error) {
  try {
    const report = JSON.parse(error);
    if (report && report.error_message) return report.error_message;
  } catch { /* a sentence already */ }
  return String(error);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------- progress

function setBusy(busy) {
  state.busy = busy;
  $("#submit").disabled = busy;
  $("#cancel").hidden = !busy;
  $("#progress").classList.toggle("running", busy);
  clearInterval(state.timer);
  if (busy) {
    $("#progress").hidden = false;
    $("#placeholder").hidden = true;
    state.started = performance.now();
    state.timer = setInterval(tick, 250);
  } else {
    state.job = null;
  }
  tick();
}

function tick() {
  $("#elapsed").textContent = `${((performance.now() - state.started) / 1000).toFixed(1)} s`;
}

function setStatus(text) {
  if (text === state.lastStatus) return;
  state.lastStatus = text;
  $("#status-text").textContent = text;
  const item = document.createElement("li");
  item.textContent = `${((performance.now() - state.started) / 1000).toFixed(1)} s  ${text}`;
  $("#log").append(item);
}

function showProgress(update) {
  const { stage, step, steps } = update;
  // An outfit's update names its pass, a catalog's its batch of people.
  let where = "";
  if (update.passes) where = ` (pass ${update.pass} of ${update.passes})`;
  else if (update.batches) where = ` (batch ${update.batch} of ${update.batches})`;
  if (step !== undefined && steps) {
    $("#progress-bar").max = steps;
    $("#progress-bar").value = step;
    setStatus(`${stage}${where}: step ${step} of ${steps}`);
  } else {
    setStatus(`${stage}${where}`);
  }
}

// ---------------------------------------------------------------- results

function imageSource(entry) {
  return entry.url || `data:${entry.content_type};base64,${entry.base64}`;
}

function extension(entry) {
  return ({ "image/jpeg": "jpg", "image/webp": "webp" })[entry.content_type] || "png";
}

function words(name) {
  return String(name).replaceAll("_", " ");
}

// The results of a single job, an outfit (`passes`) or a catalog (`results`, one per person).
async function render(output, before, executionTime) {
  // A finished job fills the bar (the worker reports no update on the last step).
  $("#progress-bar").value = $("#progress-bar").max;
  const summary = $("#summary");
  const parts = [`seed ${output.seed}`];
  if (output.passes) {
    parts.push(`outfit: ${output.passes.map((done) => `${words(done.category)} (${done.model_type})`).join(", then ")}`);
  } else {
    parts.push(`${output.model_type} · ${words(output.category)}`);
  }
  if (output.results) parts.push(`${output.succeeded} of ${output.results.length} people dressed`);
  if (executionTime) parts.push(`${(executionTime / 1000).toFixed(1)} s`);
  else if (output.timings?.total) parts.push(`${output.timings.total.toFixed(1)} s`);
  const text = document.createElement("span");
  text.className = "seed";
  text.textContent = parts.join(" · ");
  const reuse = document.createElement("button");
  reuse.type = "button";
  reuse.className = "quiet";
  reuse.dataset.seed = String(output.seed);
  reuse.textContent = "Use this seed";
  summary.replaceChildren(text, reuse);
  if (output.category_scores) {
    const scores = Object.entries(output.category_scores)
      .map(([name, score]) => `${words(name)} ${(score * 100).toFixed(0)} %`).join(", ");
    summary.append(paragraph(`category found: ${scores}`));
  }
  for (const warning of output.warnings || []) summary.append(paragraph(warning, "warning"));

  const results = $("#results");
  const name = `tryon-seed${output.seed}`;
  if (output.results) {
    for (const [position, entry] of output.results.entries()) {
      results.append(await personResults(entry, position, name));
    }
  } else {
    output.images.forEach((entry, index) => {
      results.append(figure(entry, `Result ${index + 1}`, `${name}-${index + 1}`, before));
    });
    if (output.mask) results.append(figure(output.mask, "Mask", `mask-seed${output.seed}`, null));
  }
  for (const [number, done] of (output.passes || []).entries()) {
    const pass = `Pass ${number + 1} (${words(done.category)})`;
    for (const [index, mask] of (done.masks || []).entries()) {
      const which = done.masks.length > 1 ? ` ${index + 1}` : "";
      results.append(figure(mask, `${pass}: mask${which}`, `mask-seed${output.seed}-pass${number + 1}${which ? `-${index + 1}` : ""}`, null));
    }
    if (done.garment) results.append(figure(done.garment, `${pass}: garment as the model saw it`, `garment-pass${number + 1}`, null));
  }
  if (output.garment) results.append(figure(output.garment, "Garment as the model saw it", "garment", null));
}

// One person of a catalog: their images over their own photo, or the sentence that failed them.
async function personResults(entry, position, name) {
  const box = document.createElement("section");
  box.className = "person";
  const who = entry.person_index !== undefined ? `House model ${entry.person_index}` : `Person ${entry.person + 1}`;
  const heading = document.createElement("h3");
  heading.textContent = who;
  box.append(heading);
  if (entry.error) {
    box.append(paragraph(entry.error, "warning"));
    return box;
  }
  const before = entry.person_index !== undefined ? await houseImage(entry.person_index) : null;
  entry.images.forEach((image, index) => {
    box.append(figure(image, `${who}: result ${index + 1}`, `${name}-person${position + 1}-${index + 1}`, before));
  });
  if (entry.mask) box.append(figure(entry.mask, `${who}: mask`, `mask-person${position + 1}`, null));
  return box;
}

function figure(entry, caption, filename, before) {
  const box = document.createElement("figure");
  const frame = document.createElement("div");
  frame.className = "compare";
  const image = document.createElement("img");
  image.src = imageSource(entry);
  image.alt = caption;
  frame.append(image);
  box.append(frame);
  if (before) {
    frame.classList.add("with-before");
    frame.style.backgroundImage = `url("${before.replaceAll('"', "%22")}")`;
    frame.style.setProperty("--cut", "50%");
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = "0";
    slider.max = "100";
    slider.value = "50";
    slider.className = "slider";
    slider.setAttribute("aria-label", `${caption}: before / after`);
    box.append(slider);
  }
  const text = document.createElement("figcaption");
  const link = document.createElement("a");
  link.href = image.src;
  link.download = `${filename}.${extension(entry)}`;
  link.textContent = "Download";
  text.append(`${caption} · `, link);
  box.append(text);
  return box;
}

function paragraph(text, className = "") {
  const element = document.createElement("p");
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

function onSlider(event) {
  if (!event.target.classList.contains("slider")) return;
  const frame = event.target.closest("figure").querySelector(".compare");
  frame.style.setProperty("--cut", `${event.target.value}%`);
}

function onUseSeed(event) {
  const seed = event.target.dataset?.seed;
  if (seed === undefined) return;
  $('input[name="seed"]', form).value = seed;
  showRequest();
}

// ---------------------------------------------------------------- errors

function clearOutput() {
  showError("");
  $("#results").replaceChildren();
  $("#summary").replaceChildren();
  $("#log").replaceChildren();
  $("#progress-bar").value = 0;
  state.lastStatus = "";
}

// The worker's sentence in the alert, and each problem beside the field it names.
function showError(message) {
  $("#error").textContent = message;
  for (const note of $$("[data-error-for]")) setFieldError(note.dataset.errorFor, "");
  if (!message) return;
  for (const [name, problem] of fieldProblems(message)) setFieldError(name, problem);
}

// An input error lists its problems ("invalid input: a; b"), each naming its field first or in
// quotes; any other error names at most one field, as its first word ("person: the URL ...").
function fieldProblems(message) {
  const names = new Set([...fieldNames(), "api-key"]);
  const listed = /^invalid input:\s*/.test(message);
  const problems = listed ? message.replace(/^invalid input:\s*/, "").split(/;\s+/) : [message];
  const found = new Map();
  for (const problem of problems) {
    const name = namedField(problem, names, listed);
    if (name) found.set(name, found.has(name) ? `${found.get(name)}; ${problem}` : problem);
  }
  return found;
}

function namedField(problem, names, listed) {
  if (/API key/.test(problem)) return "api-key";
  // An outfit's item: item 0 is the top-level controls, item 1 the second garment's (or the
  // top-level control of a field the item has none of, such as its model type); a problem of the
  // combination goes beside the second garment's category.
  const item = problem.match(/^garments(?:\[(\d+)\]\.?([a-z_]*))?/);
  if (item) {
    const [, index, field] = item;
    if (index === undefined) return names.has("garments.1.category") ? "garments.1.category" : null;
    const target = field || "garment";
    if (index !== "0" && names.has(`garments.${index}.${target}`)) return `garments.${index}.${target}`;
    return names.has(target) ? target : null;
  }
  const first = problem.match(/^([a-z_]+)\b/);
  if (first && names.has(first[1])) return first[1];
  if (!listed) return null;
  for (const quoted of problem.matchAll(/'([a-z_]+)'/g)) if (names.has(quoted[1])) return quoted[1];
  for (const word of problem.matchAll(/\b([a-z_]+)\b/g)) if (names.has(word[1])) return word[1];
  return null;
}

function setFieldError(name, text) {
  const note = $(`[data-error-for="${name}"]`);
  if (note) note.textContent = text;
  for (const control of $$(`[name="${name}"]`, form)) {
    if (text) control.setAttribute("aria-invalid", "true");
    else control.removeAttribute("aria-invalid");
  }
}

init();
