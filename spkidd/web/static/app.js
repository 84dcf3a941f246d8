// spkidd's household page: live view over Server-Sent Events, voices, unknown clips, recording.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const SHOWN_S = 300; // the timeline shows the last five minutes
let info = {};
let speakers = [];
let clockOffset = 0; // server time minus browser time, seconds
const views = {};

// Rounded down: nothing short of certainty reads 100 % (unknown's confidence can be 0.999).
function percent(p) {
  return `${Math.floor(p * 100)} %`;
}

function colour(name) {
  if (name === "unknown") return "#9aa3b0";
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 65% 50%)`;
}

function show(el, text, kind) {
  el.textContent = text;
  el.className = "message " + (kind || "");
}

// The password goes with every request: changes need it, and so do the kept recordings beyond loopback.
function withPassword(headers) {
  const token = $("#token").value || sessionStorage.getItem("spkidd-token") || "";
  return token ? Object.assign(headers, { Authorization: "Bearer " + token }) : headers;
}

async function api(path, options = {}) {
  const headers = withPassword(Object.assign({}, options.headers || {}));
  if (options.method && options.method !== "GET") headers["X-Spkidd-Request"] = "1";
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = {};
  try { body = await response.json(); } catch (e) { body = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function postJson(path, data) {
  return api(path, { method: "POST", body: JSON.stringify(data), headers: { "Content-Type": "application/json" } });
}

// ----- tabs ----------------------------------------------------------------------------------------------------

function selectTab() {
  const tab = (location.hash || "#live").slice(1);
  $$(".tab").forEach((s) => { s.hidden = s.id !== "tab-" + tab; });
  $$("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  if (tab === "voices") loadVoices();
  if (tab === "unknown") loadClips();
  if (tab === "record" || tab === "unknown") loadVoices();
}

// ----- live view -----------------------------------------------------------------------------------------------

function sourceCard(name) {
  let card = $(`.source[data-source="${CSS.escape(name)}"]`);
  if (!card) {
    card = $("#source-template").content.firstElementChild.cloneNode(true);
    card.dataset.source = name;
    $(".name", card).textContent = name;
    $("#sources").appendChild(card);
  }
  return card;
}

function renderView(name, view) {
  views[name] = Object.assign(views[name] || { timeline: [] }, view);
  const v = views[name];
  const card = sourceCard(name);
  card.classList.toggle("speaking", v.speaking);
  card.className = card.className.replace(/\bstate-\S+/g, "").trim() + " state-" + v.state;
  const status = $(".status", card);
  status.textContent = v.online ? "online" : "offline";
  status.className = "status " + (v.online ? "online" : "offline");
  const waiting = { none: "nobody yet", listening: "listening…" }[v.state];
  $(".speaker", card).textContent = waiting || v.speaker;
  $(".confidence", card).textContent = waiting ? "" : `${percent(v.confidence)}`;
  const list = $(".candidates", card);
  const ranked = Object.entries(v.top_k || {}).sort((a, b) => b[1] - a[1]);
  list.replaceChildren(...ranked.map(([who, p]) => {
    const li = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(0.2, p * 8)}rem`;
    bar.style.background = colour(who);
    li.append(bar, `${who} ${percent(p)}`);
    return li;
  }));
}

function addSegment(name, segment) {
  views[name].timeline.push(segment);
  const li = document.createElement("li");
  li.dataset.speaker = segment.speaker;
  const at = new Date(segment.end * 1000).toLocaleTimeString();
  li.textContent = `${at} ${segment.speaker} (${percent(segment.confidence)})`;
  $(".recent", sourceCard(name)).prepend(li);
}

function drawTimelines() {
  const now = Date.now() / 1000 + clockOffset;
  for (const [name, v] of Object.entries(views)) {
    v.timeline = v.timeline.filter((s) => s.end > now - SHOWN_S);
    const bar = $(".timeline", sourceCard(name));
    bar.replaceChildren(...v.timeline.map((s) => {
      const div = document.createElement("div");
      div.className = "segment";
      div.dataset.speaker = s.speaker;
      div.title = `${s.speaker} ${percent(s.confidence)}`;
      div.style.left = `${100 * (1 - (now - s.start) / SHOWN_S)}%`;
      div.style.width = `${100 * (s.end - s.start) / SHOWN_S}%`;
      div.style.background = colour(s.speaker);
      return div;
    }));
  }
}

function onSnapshot(message) {
  clockOffset = message.now - Date.now() / 1000;
  $("#sources").replaceChildren();
  for (const key of Object.keys(views)) delete views[key];
  for (const [name, v] of Object.entries(message.sources)) {
    renderView(name, Object.assign({}, v, { timeline: [] }));
    v.timeline.forEach((s) => addSegment(name, s));
  }
  drawTimelines();
}

function connectLive() {
  const events = new EventSource("/api/live/events");
  events.onopen = () => { $("#live-status").textContent = "Live."; };
  events.onerror = () => { $("#live-status").textContent = "Connection lost; reconnecting…"; };
  events.onmessage = (e) => {
    const message = JSON.parse(e.data);
    if (message.type === "snapshot") return onSnapshot(message);
    clockOffset = message.now - Date.now() / 1000;
    renderView(message.source, message.view);
    if (message.segments.length) {
      message.segments.forEach((s) => addSegment(message.source, s));
      drawTimelines();
    }
  };
}

// ----- voices --------------------------------------------------------------------------------------------------

function fillSpeakerSelects() {
  for (const select of [$("#enroll-existing"), $("#record-existing")]) {
    const chosen = select.value;
    select.replaceChildren(...speakers.map((s) => new Option(s.name, s.name, false, s.name === chosen)));
  }
}

function renderVoices() {
  $("#voices-list").replaceChildren(...speakers.map((s) => {
    const row = document.createElement("tr");
    row.dataset.speaker = s.name;
    const cells = [s.name, s.source, `${s.seconds.toFixed(1)} s`].map((text) => {
      const td = document.createElement("td");
      td.textContent = text;
      return td;
    });
    const actions = document.createElement("td");
    actions.className = "actions";
    const newName = Object.assign(document.createElement("input"), { className: "new-name", placeholder: "new name" });
    const rename = Object.assign(document.createElement("button"), { className: "rename", textContent: "Rename" });
    const forget = Object.assign(document.createElement("button"), { className: "forget danger", textContent: "Forget" });
    rename.onclick = () => voiceChange("/api/voices/rename", { speaker: s.name, new_name: newName.value },
      `${s.name} is now called ${newName.value.trim()}`);
    forget.onclick = () => {
      if (!forget.dataset.armed) {
        forget.dataset.armed = "1";
        forget.textContent = "Really forget?";
        return;
      }
      voiceChange("/api/voices/forget", { speaker: s.name }, `${s.name} is forgotten`);
    };
    actions.append(newName, rename, forget);
    row.append(...cells, actions);
    return row;
  }));
  fillSpeakerSelects();
}

async function loadVoices() {
  try {
    speakers = (await api("/api/voices")).speakers;
    renderVoices();
  } catch (e) {
    show($("#voices-message"), e.message, "error");
  }
}

async function voiceChange(path, data, done) {
  try {
    speakers = (await postJson(path, data)).speakers;
    renderVoices();
    show($("#voices-message"), done, "ok");
  } catch (e) {
    show($("#voices-message"), e.message, "error");
    loadVoices();
  }
}

// ----- unknown voices ------------------------------------------------------------------------------------------

async function loadClips() {
  const box = $("#clip-groups");
  box.textContent = "Loading…";
  try {
    const body = await api("/api/clips");
    if (!body.enabled) {
      box.textContent = "Keeping unknown voices is off: set [unknown_clips] folder in the daemon's config.toml.";
      return;
    }
    if (!body.groups.length) {
      box.textContent = "No unknown voices kept yet.";
      return;
    }
    box.replaceChildren(...body.groups.map((group, i) => {
      const div = document.createElement("div");
      div.className = "group";
      const h = document.createElement("h3");
      h.textContent = `Voice ${i + 1}: ${group.clips.length} clip(s)`;
      div.append(h, ...group.clips.map(clipRow));
      return div;
    }));
  } catch (e) {
    box.textContent = e.message;
  }
}

function clipRow(clip) {
  const row = document.createElement("label");
  row.className = "clip";
  const box = Object.assign(document.createElement("input"), { type: "checkbox", name: "clip", value: clip.name });
  const audio = clipPlayer(clip);
  const meta = document.createElement("span");
  meta.className = "meta";
  const when = clip.time ? new Date(clip.time).toLocaleString() : clip.name;
  // Names only: a stranger's probabilities crowd onto the nearest voice, and "closest: mom 97 %" read as "97 % mom".
  const near = Object.entries(clip.candidates).sort((a, b) => b[1] - a[1]).map(([who]) => who).join(", ");
  meta.textContent = `${when} · ${clip.source} · ${clip.speech_s.toFixed(1)} s of speech` + (near ? ` · closest voices: ${near}` : "");
  row.append(box, audio, meta);
  return row;
}

// A page with a password cannot hand it to an <audio> element: it fetches the clip itself when asked to play it.
function clipPlayer(clip) {
  const url = "/api/clips/" + encodeURIComponent(clip.name);
  const audio = Object.assign(document.createElement("audio"), { controls: true, preload: "none" });
  if (!info.token_required) {
    audio.src = url;
    return audio;
  }
  const button = Object.assign(document.createElement("button"), { type: "button", className: "listen", textContent: "▶ listen" });
  button.onclick = async () => {
    const response = await fetch(url, { headers: withPassword({}) });
    if (!response.ok) {
      button.textContent = response.status === 401 ? "▶ listen (password?)" : `▶ listen (${response.status})`;
      return;
    }
    audio.src = URL.createObjectURL(await response.blob());
    button.replaceWith(audio);
    audio.play().catch(() => {});
  };
  return button;
}

function enrollTarget(mode, nameInput, select, force) {
  const isNew = $(`input[name="${mode}"]:checked`).value === "new";
  return { speaker: isNew ? nameInput.value : select.value, new: isNew, force: force.checked };
}

function showReport(message, warnings, report) {
  show(message, `${report.updated ? "Updated" : "Enrolled"} ${report.speaker} from ${report.speech_s} s of speech.`, "ok");
  warnings.replaceChildren(...report.warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  speakers = report.speakers;
  renderVoices();
}

async function enrollClips(event) {
  event.preventDefault();
  const message = $("#enroll-message");
  const warnings = $("#enroll-warnings");
  warnings.replaceChildren();
  const clips = $$('input[name="clip"]:checked').map((c) => c.value);
  show(message, "Enrolling…");
  $("#enroll-button").disabled = true;
  try {
    const target = enrollTarget("enroll-mode", $("#enroll-name"), $("#enroll-existing"), $("#enroll-force"));
    showReport(message, warnings, await postJson("/api/enroll", Object.assign(target, { clips })));
    loadClips();
  } catch (e) {
    show(message, e.message, "error");
  } finally {
    $("#enroll-button").disabled = false;
  }
}

// ----- recording -----------------------------------------------------------------------------------------------

const recording = { recorder: null, chunks: [], blob: null, name: "", stream: null, context: null, started: 0 };

// Browsers give a page the microphone only in a secure context (https, or this machine's own address): elsewhere
// `navigator.mediaDevices` is missing, so the page says why and offers the file picker, which a phone fills from
// its voice recorder.
function offerMicrophone() {
  const available = window.isSecureContext && navigator.mediaDevices && window.MediaRecorder;
  $("#record-start").disabled = !available;
  $("#record-unavailable").hidden = Boolean(available);
}

// A recording the user already has: played back and enrolled as a recording made here would be.
function chooseFile() {
  const file = $("#record-file").files[0];
  if (!file) return;
  const message = $("#record-message");
  const refusal = tooLarge(file);
  if (refusal) {
    recording.blob = null;
    $("#record-enroll").disabled = true;
    return show(message, refusal, "error");
  }
  recording.blob = file;
  recording.name = file.name;
  const playback = $("#record-playback");
  playback.src = URL.createObjectURL(file);
  playback.hidden = false;
  $("#record-enroll").disabled = false;
  show(message, `Chose ${file.name} (${Number((file.size / 1e6).toPrecision(2))} MB). Name it and enroll.`);
}

async function startRecording() {
  const message = $("#record-message");
  try {
    recording.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    show(message, `No microphone: ${e.message} (the page needs http://127.0.0.1 or https to use one)`, "error");
    return;
  }
  recording.chunks = [];
  recording.recorder = new MediaRecorder(recording.stream);
  recording.recorder.ondataavailable = (e) => { if (e.data.size) recording.chunks.push(e.data); };
  recording.recorder.onstop = finishRecording;
  recording.recorder.start(250);
  recording.started = Date.now();
  meterLoop(recording.stream);
  $("#record-start").disabled = true;
  $("#record-stop").disabled = false;
  $("#record-enroll").disabled = true;
  show(message, "Recording… read the text aloud.");
}

function meterLoop(stream) {
  recording.context = new AudioContext();
  const analyser = recording.context.createAnalyser();
  analyser.fftSize = 1024;
  recording.context.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const tick = () => {
    if (!recording.recorder || recording.recorder.state !== "recording") return;
    analyser.getFloatTimeDomainData(samples);
    let peak = 0;
    for (const s of samples) peak = Math.max(peak, Math.abs(s));
    $("#level").value = peak;
    $("#record-time").textContent = `${((Date.now() - recording.started) / 1000).toFixed(1)} s`;
    requestAnimationFrame(tick);
  };
  tick();
}

function stopRecording() {
  if (recording.recorder && recording.recorder.state === "recording") recording.recorder.stop();
  $("#record-stop").disabled = true;
}

function finishRecording() {
  recording.stream.getTracks().forEach((t) => t.stop());
  if (recording.context) recording.context.close();
  recording.blob = new Blob(recording.chunks, { type: recording.recorder.mimeType || "audio/webm" });
  recording.name = "recording.webm";
  $("#record-file").value = "";
  const playback = $("#record-playback");
  playback.src = URL.createObjectURL(recording.blob);
  playback.hidden = false;
  $("#level").value = 0;
  $("#record-start").disabled = false;
  $("#record-enroll").disabled = false;
  show($("#record-message"), `Recorded ${((Date.now() - recording.started) / 1000).toFixed(1)} s. Name it and enroll.`);
}

// The daemon refuses an upload over [web] max_upload_mb (megabytes of 10^6 bytes) with 413; saying so here spares
// sending it. Returns the message, or "" when the recording may go.
function tooLarge(blob) {
  const limit = info.max_upload_mb;
  if (!limit || blob.size <= limit * 1e6) return "";
  return `The recording is ${Number((blob.size / 1e6).toPrecision(3))} MB, more than the ${limit} MB this page accepts: record ` +
    "a shorter one, or raise [web] max_upload_mb in the daemon's config.toml.";
}

async function enrollRecording(event) {
  event.preventDefault();
  const message = $("#record-message");
  const warnings = $("#record-warnings");
  warnings.replaceChildren();
  if (!recording.blob) return show(message, "Record something or choose a recording first.", "error");
  const refusal = tooLarge(recording.blob);
  if (refusal) return show(message, refusal, "error");
  const target = enrollTarget("record-mode", $("#record-name"), $("#record-existing"), $("#record-force"));
  const form = new FormData();
  form.append("speaker", target.speaker);
  form.append("new", String(target.new));
  form.append("force", String(target.force));
  form.append("audio", recording.blob, recording.name);
  show(message, "Enrolling…");
  $("#record-enroll").disabled = true;
  try {
    showReport(message, warnings, await api("/api/record", { method: "POST", body: form }));
  } catch (e) {
    show(message, e.message, "error");
  } finally {
    $("#record-enroll").disabled = false;
  }
}

// ----- start ---------------------------------------------------------------------------------------------------

function showBanner(text) {
  const banner = $("#banner");
  banner.textContent = text;
  banner.hidden = false;
}

async function start() {
  try {
    info = await api("/api/info");
  } catch (e) {
    info = {};
  }
  if (info.token_required) {
    $("#token-box").hidden = false;
    $("#token").value = sessionStorage.getItem("spkidd-token") || "";
    $("#token").onchange = () => sessionStorage.setItem("spkidd-token", $("#token").value);
  }
  if (info.read_only) {
    showBanner("Read-only: this page is reachable from the network without a password ([web] token).");
  } else if (info.token_required && !window.isSecureContext) {
    showBanner("The password crosses the network unencrypted here: give the daemon [web] tls_cert to use https.");
  }
  $("#enroll-form").onsubmit = enrollClips;
  $("#record-form").onsubmit = enrollRecording;
  $("#record-start").onclick = startRecording;
  $("#record-stop").onclick = stopRecording;
  $("#record-file").onchange = chooseFile;
  offerMicrophone();
  window.addEventListener("hashchange", selectTab);
  selectTab();
  connectLive();
  setInterval(drawTimelines, 2000);
}

start();
