// Care Companion clinicians' app: technicians upload studies, radiologists read the worklist in triage order and
// confirm or correct the AI. Plain DOM, no framework, no CDN; everything typed by a user is shown as text (never
// as HTML); the access token lives in this page's memory only (not in localStorage or sessionStorage).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    user: null,
    tasks: [],
    patient: null,
    files: {},
    rows: [],
    index: -1,
    films: [],
  };
  const PRIORITY = { flagged: "AI-flagged", low_confidence: "Low confidence", routine: "Routine" };
  const VIEW_NAMES = { pa: "PA view", lateral: "Lateral view" };

  class ApiError extends Error {
    constructor(status, body) {
      let detail = body && body.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg || String(d)).join("; ");
      super(detail || `The service answered ${status}.`);
      this.status = status;
      this.code = (body && body.error) || "";
    }
  }

  async function api(path, { method = "GET", json = null, form = null, raw = false } = {}) {
    const headers = {};
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let body = form;
    if (json !== null) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, credentials: "omit", cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, { detail: "The service could not be reached (connection lost). Nothing was stored; try again." });
    }
    if (response.status === 401 && state.token) {
      signOut("Your session has ended: sign in again.");
      throw new ApiError(401, { detail: "Signed out." });
    }
    if (!response.ok) {
      let parsed = null;
      try { parsed = await response.json(); } catch (err) { parsed = null; }
      throw new ApiError(response.status, parsed);
    }
    return raw ? response : response.json();
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function say(text, kind = "error") {
    const box = $("message");
    box.textContent = text;
    box.className = kind === "info" ? "message info" : "message";
    box.hidden = !text;
  }

  function pct(p) { return `${(100 * p).toFixed(1)}%`; }

  function age(iso) {
    const minutes = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 60000));
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    return hours < 48 ? `${hours} h ${minutes % 60} min` : `${Math.floor(hours / 24)} days`;
  }

  // -- session ------------------------------------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    say("");
    const form = new URLSearchParams({ username: $("username").value, password: $("password").value });
    try {
      const response = await fetch("/v1/auth/token", { method: "POST", body: form, credentials: "omit" });
      if (!response.ok) {
        let parsed = null;
        try { parsed = await response.json(); } catch (err) { parsed = null; }
        throw new ApiError(response.status, parsed);
      }
      state.token = (await response.json()).access_token;
      state.user = await api("/v1/auth/me");
      state.tasks = await api("/v1/tasks");
    } catch (err) {
      state.token = null;
      say(err.status === 401 ? "Wrong username or password." : err.message);
      return;
    }
    $("password").value = "";
    $("who").textContent = `${state.user.full_name || state.user.username} · ${state.user.role}`;
    $("signin").hidden = true;
    $("session").hidden = false;
    $("nav").hidden = false;
    fillTasks();
    show(canRead() ? "worklist" : "upload");
  }

  function signOut(text) {
    state.token = null;
    state.user = null;
    state.rows = [];
    for (const id of ["upload", "worklist", "reader", "nav", "session"]) $(id).hidden = true;
    $("signin").hidden = false;
    $("worklist-rows").replaceChildren();
    $("films").replaceChildren();
    say(text || "", text ? "info" : "error");
  }

  function canRead() { return ["radiologist", "admin"].includes(state.user && state.user.role); }

  function show(view) {
    for (const id of ["upload", "worklist", "reader"]) $(id).hidden = id !== view;
    for (const button of $("nav").querySelectorAll("button")) {
      if (button.dataset.view === view || (view === "reader" && button.dataset.view === "worklist")) {
        button.setAttribute("aria-current", "page");
      } else {
        button.removeAttribute("aria-current");
      }
    }
    if (view === "worklist") loadWorklist();
  }

  function fillTasks() {
    const choice = $("task");
    const filter = $("filter-task");
    choice.replaceChildren();
    filter.replaceChildren(el("option", "All"));
    filter.firstChild.value = "";
    for (const task of state.tasks) {
      const option = el("option", task.title);
      option.value = task.name;
      choice.append(option);
      const again = el("option", task.title);
      again.value = task.name;
      filter.append(again);
    }
    renderSlots();
  }

  // -- upload (technicians) ---------------------------------------------------------------------------------------

  function currentTask() { return state.tasks.find((t) => t.name === $("task").value); }

  function renderSlots() {
    const task = currentTask();
    state.files = {};
    const slots = $("slots");
    slots.replaceChildren();
    if (!task) return;
    task.views.forEach((view, i) => {
      const slot = el("div", null, "slot");
      slot.dataset.testid = `slot-${view}`;
      const id = `file-${view}`;
      const label = el("label", task.multiview ? `${VIEW_NAMES[view] || view} (drop a file or choose one)` : "Film (drop a file or choose one)");
      label.htmlFor = id;
      const input = el("input");
      input.type = "file";
      input.id = id;
      input.accept = ".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom";
      input.dataset.testid = id;
      input.dataset.field = task.upload_fields[i] || view;
      const name = el("span", "No file yet.", "file");
      input.addEventListener("change", () => setFile(view, input.files[0], name));
      slot.addEventListener("dragover", (event) => { event.preventDefault(); slot.classList.add("over"); });
      slot.addEventListener("dragleave", () => slot.classList.remove("over"));
      slot.addEventListener("drop", (event) => {
        event.preventDefault();
        slot.classList.remove("over");
        if (event.dataTransfer.files.length) setFile(view, event.dataTransfer.files[0], name);
      });
      slot.append(label, input, name);
      slots.append(slot);
    });
    updateSend();
  }

  function setFile(view, file, label) {
    if (file) state.files[view] = file;
    else delete state.files[view];
    label.textContent = file ? `${file.name} (${Math.ceil(file.size / 1024)} KB)` : "No file yet.";
    updateSend();
  }

  function updateSend() { $("send").disabled = !(state.patient && Object.keys(state.files).length); }

  async function searchPatients(event) {
    event.preventDefault();
    say("");
    const list = $("patient-results");
    list.replaceChildren();
    try {
      const page = await api(`/v1/patients?q=${encodeURIComponent($("patient-query").value.trim())}&limit=20`);
      if (!page.data.length) list.append(el("li", "No patient found: register one below.", "muted"));
      for (const patient of page.data) {
        const item = el("li");
        const button = el("button", `${patient.name} · MRN ${patient.mrn}${patient.birth_date ? ` · born ${patient.birth_date}` : ""}`);
        button.type = "button";
        button.dataset.testid = "patient-choice";
        button.addEventListener("click", () => choosePatient(patient));
        item.append(button);
        list.append(item);
      }
    } catch (err) {
      say(err.message);
    }
  }

  async function registerPatient(event) {
    event.preventDefault();
    say("");
    const body = { mrn: $("new-mrn").value.trim(), name: $("new-name").value.trim(), sex: $("new-sex").value };
    if ($("new-birth").value) body.birth_date = $("new-birth").value;
    try {
      choosePatient(await api("/v1/patients", { method: "POST", json: body }));
      $("patient-form").reset();
      $("register").open = false;
      say(`Patient ${body.name} registered.`, "info");
    } catch (err) {
      say(err.status === 409 ? `MRN ${body.mrn} is already registered: search for it.` : err.message);
    }
  }

  function choosePatient(patient) {
    state.patient = patient;
    $("patient-chosen").textContent = `Patient: ${patient.name} · MRN ${patient.mrn}`;
    updateSend();
  }

  async function send(event) {
    event.preventDefault();
    say("");
    const task = currentTask();
    if (!task || !state.patient) return;
    const result = $("result");
    result.hidden = true;
    $("send").disabled = true;
    try {
      const form = new FormData();
      for (const input of $("slots").querySelectorAll("input[type=file]")) {
        const view = input.id.slice("file-".length);
        if (state.files[view]) form.append(input.dataset.field, state.files[view], state.files[view].name);
      }
      form.append("patient_id", String(state.patient.id)); // the study opens with the result, or not at all
      const answer = await api(`/v1/predict/${encodeURIComponent(task.name)}`, { method: "POST", form });
      renderResult(result, answer);
    } catch (err) {
      const refused = err.status === 422 && task && err.code === task.refusal_code;
      say(refused ? `Refused, no finding made: ${err.message}` : `Not read: ${err.message}`);
    } finally {
      updateSend();
    }
  }

  function renderResult(box, answer) {
    box.replaceChildren();
    box.append(el("p", answer.warning, "warning"));
    const finding = el("p", `AI finding: ${answer.label}`, `finding ${answer.decision.positive ? "positive" : "negative"}`);
    finding.dataset.testid = "finding";
    box.append(finding);
    box.append(el("p", answer.decision.positive
      ? `Flagged for priority reading: P(abnormal) ${pct(answer.decision.score)} reaches the threshold ${pct(answer.decision.threshold)}.`
      : `Not flagged: P(abnormal) ${pct(answer.decision.score)} is below the threshold ${pct(answer.decision.threshold)}.`));
    box.append(probabilityTable(answer.probabilities));
    const confidence = el("p", `Confidence: ${answer.confidence}`);
    confidence.dataset.testid = "confidence";
    box.append(confidence);
    if (answer.confidence_reasons.length) {
      const reasons = el("ul");
      for (const reason of answer.confidence_reasons) reasons.append(el("li", reason));
      box.append(reasons);
    }
    box.append(el("p", `Views read: ${answer.views_used.join(", ")} · study ${answer.study_id}`, "muted small"));
    box.hidden = false;
  }

  function probabilityTable(probabilities) {
    const table = el("table", null, "probs");
    table.append(el("caption", "Calibrated probabilities", "muted small"));
    for (const [label, p] of Object.entries(probabilities).sort((a, b) => b[1] - a[1])) {
      const row = el("tr");
      row.append(el("th", label), el("td", pct(p)));
      table.append(row);
    }
    return table;
  }

  // -- worklist (radiologists) -------------------------------------------------------------------------------------

  async function loadWorklist(event) {
    if (event) event.preventDefault();
    say("");
    const params = new URLSearchParams({ status: $("filter-status").value, limit: "200" });
    if ($("filter-task").value) params.set("task", $("filter-task").value);
    try {
      const page = await api(`/v1/worklist?${params}`);
      state.rows = page.data;
      renderWorklist();
    } catch (err) {
      say(err.message);
    }
  }

  function renderWorklist() {
    const body = $("worklist-rows");
    body.replaceChildren();
    if (!state.rows.length) {
      const row = el("tr");
      const cell = el("td", "Nothing here.", "muted");
      cell.colSpan = 6;
      row.append(cell);
      body.append(row);
    }
    state.rows.forEach((item, i) => {
      const row = el("tr");
      row.tabIndex = 0;
      row.dataset.testid = "worklist-row";
      row.dataset.studyId = String(item.study_id);
      const badge = el("span", PRIORITY[item.priority], `badge ${item.priority}`);
      const priority = el("td");
      priority.append(badge);
      const task = state.tasks.find((t) => t.name === item.task);
      row.append(
        priority,
        el("td", task ? task.title : item.task),
        el("td", `${item.patient_name} · MRN ${item.patient_mrn}`),
        el("td", age(item.waiting_since)),
        el("td", `${item.label}${item.positive ? " (flagged)" : ""} · ${item.confidence} confidence`),
        el("td", item.reviewed_at ? `${item.true_label} by ${item.reviewed_by}` : "Awaiting"),
      );
      row.addEventListener("click", () => openStudy(i));
      row.addEventListener("keydown", (event) => { if (event.key === "Enter") openStudy(i); });
      body.append(row);
    });
  }

  // -- reading view ------------------------------------------------------------------------------------------------

  async function openStudy(index) {
    const item = state.rows[index];
    if (!item) return;
    state.index = index;
    say("");
    show("reader");
    const task = state.tasks.find((t) => t.name === item.task);
    const side = $("reader-result");
    side.replaceChildren();
    side.append(el("h2", `${item.patient_name} · MRN ${item.patient_mrn}`));
    side.append(el("p", `${task ? task.title : item.task} · study ${item.study_id} · waiting ${age(item.waiting_since)}`, "muted small"));
    const finding = el("p", `AI finding: ${item.label}`, `finding ${item.positive ? "positive" : "negative"}`);
    finding.dataset.testid = "reader-finding";
    side.append(finding);
    side.append(el("p", item.positive ? "Flagged by the AI for priority reading." : "Not flagged by the AI."));
    side.append(probabilityTable(item.probabilities));
    side.append(el("p", `Confidence: ${item.confidence}`));
    if (item.confidence_reasons.length) {
      const reasons = el("ul");
      reasons.dataset.testid = "reader-reasons";
      for (const reason of item.confidence_reasons) reasons.append(el("li", reason));
      side.append(reasons);
    }
    const labels = $("true-label");
    labels.replaceChildren();
    for (const cls of task ? task.classes : Object.keys(item.probabilities)) {
      const option = el("option", cls);
      option.value = cls;
      labels.append(option);
    }
    $("comment").value = "";
    const reviewed = $("reviewed");
    reviewed.hidden = !item.reviewed_at;
    $("verdict").hidden = Boolean(item.reviewed_at) || !canRead();
    reviewed.replaceChildren();
    if (item.reviewed_at) {
      reviewed.append(el("p", `Reviewed by ${item.reviewed_by} on ${new Date(item.reviewed_at).toLocaleString()}`));
      reviewed.append(el("p", `Verdict: ${item.true_label} · AI said ${item.label} · ${item.agrees ? "agrees" : "corrected"}`));
    }
    await loadFilms(item);
  }

  async function loadFilms(item) {
    const films = $("films");
    films.replaceChildren();
    state.films = [];
    for (const [view, imageId] of Object.entries(item.images)) {
      const box = el("figure", null, "film");
      box.append(el("h3", VIEW_NAMES[view] || view));
      const canvas = el("canvas");
      canvas.dataset.testid = `film-${view}`;
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `${VIEW_NAMES[view] || view} film with the AI heat map`);
      box.append(canvas);
      films.append(box);
      const film = { view, canvas, image: null, map: null, zoom: 1, x: 0, y: 0, brightness: 1, contrast: 1 };
      state.films.push(film);
      attachGestures(film);
      try {
        film.image = await bitmap(`/v1/images/${imageId}/film.png`);
        try {
          film.map = await bitmap(`/v1/predictions/${item.prediction_id}/heatmap/${encodeURIComponent(view)}.png`);
        } catch (err) {
          film.map = null; // a model without heat maps, or a view the model did not read
        }
      } catch (err) {
        say(`The ${view} film could not be loaded: ${err.message}`);
      }
      draw(film);
    }
  }

  async function bitmap(path) {
    const response = await api(path, { raw: true });
    return createImageBitmap(await response.blob());
  }

  function draw(film) {
    const canvas = film.canvas;
    const rect = canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(rect.width * ratio));
    canvas.height = Math.max(1, Math.round(rect.height * ratio));
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!film.image) return;
    const fit = Math.min(canvas.width / film.image.width, canvas.height / film.image.height) * film.zoom;
    const w = film.image.width * fit;
    const h = film.image.height * fit;
    const left = (canvas.width - w) / 2 + film.x * ratio;
    const top = (canvas.height - h) / 2 + film.y * ratio;
    const invert = $("invert").checked ? 1 : 0;
    ctx.filter = `brightness(${film.brightness.toFixed(3)}) contrast(${film.contrast.toFixed(3)}) invert(${invert})`;
    ctx.drawImage(film.image, left, top, w, h);
    ctx.filter = "none";
    if (film.map && $("show-heatmap").checked) {
      ctx.globalAlpha = Number($("heatmap-opacity").value) / 100;
      ctx.drawImage(film.map, left, top, w, h);
      ctx.globalAlpha = 1;
    }
    canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
  }

  function redraw() { for (const film of state.films) draw(film); }

  function attachGestures(film) {
    const canvas = film.canvas;
    let drag = null;
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      film.zoom = Math.min(20, Math.max(0.5, film.zoom * (event.deltaY < 0 ? 1.15 : 1 / 1.15)));
      draw(film);
    }, { passive: false });
    canvas.addEventListener("pointerdown", (event) => {
      drag = { x: event.clientX, y: event.clientY, level: event.shiftKey };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      drag.x = event.clientX;
      drag.y = event.clientY;
      if (drag.level) { // window/level: up brightens, right raises contrast
        film.brightness = Math.min(4, Math.max(0.1, film.brightness - dy / 200));
        film.contrast = Math.min(4, Math.max(0.1, film.contrast + dx / 200));
      } else {
        film.x += dx;
        film.y += dy;
      }
      draw(film);
    });
    const stop = () => { drag = null; };
    canvas.addEventListener("pointerup", stop);
    canvas.addEventListener("pointercancel", stop);
  }

  function resetView() {
    for (const film of state.films) Object.assign(film, { zoom: 1, x: 0, y: 0, brightness: 1, contrast: 1 });
    $("invert").checked = false;
    redraw();
  }

  async function verdict(trueLabel, comment) {
    const item = state.rows[state.index];
    if (!item || item.reviewed_at) return;
    try {
      await api(`/v1/studies/${item.study_id}/feedback`, {
        method: "POST",
        json: { true_label: trueLabel, comment, prediction_id: item.prediction_id },
      });
    } catch (err) {
      say(`The verdict was not saved: ${err.message}`);
      return;
    }
    item.reviewed_at = new Date().toISOString();
    item.reviewed_by = state.user.username;
    item.true_label = trueLabel;
    item.agrees = trueLabel === item.label;
    const more = nextStudy();
    const saved = `Saved: study ${item.study_id} ${item.agrees ? "confirmed" : `corrected to ${trueLabel}`}.`;
    say(more ? saved : `${saved} No more studies awaiting review in this list.`, "info");
  }

  function nextStudy() {
    const after = state.rows.findIndex((row, i) => i > state.index && !row.reviewed_at);
    const next = after >= 0 ? after : state.rows.findIndex((row, i) => i !== state.index && !row.reviewed_at);
    if (next >= 0) openStudy(next);
    else show("worklist");
    return next >= 0;
  }

  function onKey(event) {
    if ($("reader").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
    if (["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement && document.activeElement.tagName)
        && document.activeElement.type !== "checkbox" && document.activeElement.type !== "range") return;
    const key = event.key.toLowerCase();
    if (key === "h") { $("show-heatmap").checked = !$("show-heatmap").checked; redraw(); }
    else if (key === "i") { $("invert").checked = !$("invert").checked; redraw(); }
    else if (key === "r") resetView();
    else if (key === "n") { if (!nextStudy()) say("No more studies awaiting review in this list.", "info"); }
    else if (key === "c" && !$("verdict").hidden) verdict(state.rows[state.index].label, "");
    else if (key === "x" && !$("verdict").hidden) $("true-label").focus();
    else return;
    event.preventDefault();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    for (const button of $("nav").querySelectorAll("button")) button.addEventListener("click", () => show(button.dataset.view));
    $("patient-search").addEventListener("submit", searchPatients);
    $("patient-form").addEventListener("submit", registerPatient);
    $("task").addEventListener("change", renderSlots);
    $("upload-form").addEventListener("submit", send);
    $("worklist-filters").addEventListener("submit", loadWorklist);
    $("show-heatmap").addEventListener("change", redraw);
    $("heatmap-opacity").addEventListener("input", redraw);
    $("invert").addEventListener("change", redraw);
    $("reset-view").addEventListener("click", resetView);
    $("confirm").addEventListener("click", () => verdict(state.rows[state.index].label, ""));
    $("correct-form").addEventListener("submit", (event) => {
      event.preventDefault();
      verdict($("true-label").value, $("comment").value.trim());
    });
    $("next-study").addEventListener("click", () => {
      if (!nextStudy()) say("No more studies awaiting review in this list.", "info");
    });
    document.addEventListener("keydown", onKey);
    window.addEventListener("resize", redraw);
    document.body.dataset.ready = "1";
  });
})();
