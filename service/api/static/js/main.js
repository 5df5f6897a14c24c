// tomolock dashboard: live feed -> bounded tables -> plots; status polling; operator control.
import { ApiError, connectLive, getJSON, setLoop } from "./api.js";
import { Figures } from "./plots.js";
import { DecimatingTable } from "./series.js";

const CAPACITY = 2000; // rows per table: bounded memory over any scan length
const RENDER_MS = 100; // plots redraw at most 10 times a second, when new data arrived
const $ = (id) => document.getElementById(id);

const view = {
  scanId: null,
  drift: new DecimatingTable(["frame", "angle_deg", "t_ms", "drift_x_um", "drift_z_um",
    "resid_x_um", "resid_z_um", "correction_x_um", "correction_z_um", "confidence"], CAPACITY),
  perf: new DecimatingTable(["t_ms", "p50", "p99", "fps"], CAPACITY),
  process: new DecimatingTable(["t_ms", "ms"], CAPACITY),
  limits: { maxTotal: null, minConfidence: null },
  detector: { pixel: 0.03, signX: 1, signZ: 1 },
  lastFrame: null,
  pending: null, // live frames held back while a scan's history loads
};
const available = { config: true, model: true, images: true };
let figures = null;
let dirty = true;

// ------------------------------------------------------------------ helpers

// Plotly draws epoch milliseconds as UTC: shift to the control room's local time.
const localMs = (ms) => ms - new Date(ms).getTimezoneOffset() * 60000;
const num = (v, digits = 3) => (v == null || !Number.isFinite(v) ? "—" : v.toFixed(digits));
function badge(id, text, cls) {
  const el = $(id);
  el.textContent = text;
  el.className = `badge ${cls}`;
  el.title = text;
}
function logEvent(text) {
  const li = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString([], { hour12: false });
  li.append(time, text);
  $("events").prepend(li);
  while ($("events").children.length > 50) $("events").lastChild.remove();
}

// ------------------------------------------------------------------ data in

function addFrame(f) {
  if (f.scan_id !== view.scanId) newScan(f.scan_id);
  const { pixel, signX, signZ } = view.detector;
  // Image shift in pixels -> lab micrometres (dx_px = x_um / pixel, dy_px = z_um / pixel).
  view.drift.push({
    frame: f.frame, angle_deg: f.angle_deg, t_ms: localMs(f.t * 1000),
    drift_x_um: f.drift_x_um, drift_z_um: f.drift_z_um,
    resid_x_um: f.est_dx_px == null ? null : f.est_dx_px * pixel * signX,
    resid_z_um: f.est_dy_px == null ? null : f.est_dy_px * pixel * signZ,
    correction_x_um: f.correction_x_um, correction_z_um: f.correction_z_um,
    confidence: f.confidence,
  });
  view.lastFrame = f;
  dirty = true;
}

function newScan(scanId) {
  view.scanId = scanId;
  view.drift.clear();
  view.lastFrame = null;
  dirty = true;
}

function applyConfig(config) {
  const il = config.interlock || {};
  view.limits = {
    maxTotal: il.max_total_correction_um ?? null,
    minConfidence: il.min_confidence ?? config.min_confidence ?? null,
  };
  const det = config.detector || {};
  view.detector = { pixel: det.pixel_size_um ?? 0.03, signX: det.sign_x ?? 1, signZ: det.sign_z ?? 1 };
  const rows = [["mode", config.mode ?? "—"]];
  for (const [axis, lim] of Object.entries(il.soft_limits || {})) {
    rows.push([`soft limit ${axis} (µm)`, `${lim.low} … ${lim.high}`]);
  }
  for (const [key, label] of [["max_step_um", "max step (µm)"],
    ["max_total_correction_um", "max total correction (µm)"], ["dead_band_um", "dead band (µm)"],
    ["min_interval_s", "min interval (s)"], ["staleness_timeout_s", "staleness timeout (s)"],
    ["min_confidence", "min confidence"], ["max_std_um", "max std (µm)"]]) {
    const v = il[key] ?? (key === "min_confidence" || key === "dead_band_um" ? config[key] : undefined);
    if (v != null) rows.push([label, String(v)]);
  }
  if (rows.length === 1) rows.push(["interlock limits", "not configured"]);
  const body = document.createElement("tbody");
  for (const [k, v] of rows) {
    const tr = body.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  $("limits").replaceChildren(body);
  dirty = true;
}

function onEnvelope(envelope) {
  $("kpi-live-dropped").textContent = String(envelope.dropped);
  for (const e of envelope.events) {
    switch (e.type) {
      case "frame":
        if (view.pending && e.scan_id === view.scanId) view.pending.push(e);
        else addFrame(e);
        break;
      case "estimate":
        if (e.process_ms != null) view.process.push({ t_ms: localMs(Date.now()), ms: e.process_ms });
        break;
      case "scan_start": newScan(e.scan_id); logEvent(`scan ${e.scan_id} started`); break;
      case "scan_end": logEvent(`scan ${e.scan_id} ended`); break;
      case "enabled":
        showLoop(e.enabled, e.reason);
        logEvent(`loop ${e.enabled ? "enabled" : "disabled"}: ${e.reason}`);
        break;
      case "config": applyConfig(e.config); logEvent("configuration changed"); break;
      case "runout_model": loadModel(); logEvent("runout model installed"); break;
      case "reference": logEvent(`reference: ${e.reference?.strategy ?? "changed"}`); break;
      default: break;
    }
  }
}

// ------------------------------------------------------------------ status

function showLoop(enabled, reason) {
  if (enabled) badge("badge-loop", "LOOP ENABLED", "ok");
  else badge("badge-loop", `LOOP DISABLED${reason ? `: ${reason}` : ""}`, "bad");
}

function showAngle(angle) {
  $("kpi-angle").textContent = angle == null ? "—" : `${num(angle, 2)}°`;
}

function showLastFrame() {
  const f = view.lastFrame;
  if (!f) return;
  showAngle(f.angle_deg);
  const el = $("kpi-confidence");
  el.textContent = num(f.confidence, 3);
  el.classList.toggle("alert", f.confidence != null && view.limits.minConfidence != null
    && f.confidence < view.limits.minConfidence);
}

function showStatus(s) {
  const scan = s.scan;
  const scanCls = { running: "ok", ended: "neutral", idle: "neutral" }[scan.state] || "warn";
  badge("badge-scan", `SCAN ${scan.state.toUpperCase()}${scan.scan_id ? ` · ${scan.scan_id}` : ""}`, scanCls);
  showLoop(s.loop.enabled, s.loop.disabled_reason);
  badge("badge-mode", `MODE ${s.loop.mode.toUpperCase()}`, s.loop.mode === "apply" ? "ok" : "warn");
  $("version").textContent = `v${s.version}`;
  $("kpi-frame").textContent = scan.scan_id ? `${scan.frames_processed} / ${scan.frames_received}` : "—";
  if (!view.lastFrame) showAngle(scan.last_frame_angle_deg);
  const perf = s.performance;
  $("kpi-latency").textContent = perf.latency_p50_ms == null ? "—"
    : `${num(perf.latency_p50_ms, 1)} / ${num(perf.latency_p99_ms, 1)}`;
  $("kpi-fps").textContent = perf.fps == null ? "—" : `${num(perf.fps, 1)} /s`;
  const dropped = s.counters.frames_dropped;
  $("kpi-dropped").textContent = String(dropped);
  $("kpi-dropped").classList.toggle("alert", dropped > 0);
  const rejected = Object.entries(s.counters.frames_rejected);
  const total = rejected.reduce((acc, [, n]) => acc + n, 0);
  $("kpi-rejected").textContent = String(total);
  $("kpi-rejected").title = rejected.map(([k, n]) => `${k}: ${n}`).join("\n") || "none";
  $("kpi-rejected").classList.toggle("alert", total > 0);
  $("kpi-decision").textContent = s.loop.last_decision ?? "—";
  const sp = s.loop.last_setpoint;
  $("kpi-setpoint").textContent = sp ? `${num(sp.x_um)} / ${num(sp.z_um)}` : "—";
  view.perf.push({ t_ms: localMs(Date.now()), p50: perf.latency_p50_ms, p99: perf.latency_p99_ms, fps: perf.fps });
  if (scan.scan_id && scan.scan_id !== view.scanId && scan.state === "running") loadHistory(scan.scan_id);
  dirty = true;
}

async function pollStatus() {
  try {
    showStatus(await getJSON("status"));
  } catch (err) {
    badge("badge-scan", `STATUS ERROR: ${err.message}`, "bad");
  }
}

/** Page opened mid-scan: plot what the service already logged (then the live feed goes on). */
async function loadHistory(scanId) {
  newScan(scanId);
  view.pending = [];
  try {
    let since = 0;
    for (let page = 0; page < 20 && since != null; page += 1) {
      const h = await getJSON(`scans/${encodeURIComponent(scanId)}/drift?since_frame=${since}&limit=5000`);
      if (view.scanId !== scanId) return;
      const c = h.columns;
      const last = view.lastFrame?.frame ?? -1;
      for (let i = 0; i < c.frame.length; i += 1) {
        if (c.frame[i] <= last) continue;
        const row = { scan_id: scanId };
        for (const k of Object.keys(c)) row[k] = c[k][i];
        addFrame(row);
      }
      since = h.next_frame;
    }
  } catch (err) {
    logEvent(`history of ${scanId} not loaded: ${err.message}`);
  } finally {
    const held = view.pending || [];
    view.pending = null;
    for (const f of held) if (view.scanId === f.scan_id && f.frame > (view.lastFrame?.frame ?? -1)) addFrame(f);
  }
}

// ------------------------------------------------------------------ optional endpoints

async function optional(name, path, onData, onMissing) {
  if (!available[name]) return;
  try {
    onData(await getJSON(path));
  } catch (err) {
    if (err instanceof ApiError && err.status === 501) {
      available[name] = false; // this backend does not provide it: stop asking
      onMissing(`not available: ${err.message.replace(/^501 [^:]*: /, "")}`);
    } else {
      onMissing(`not available: ${err.message}`);
    }
  }
}

function loadConfig() {
  return optional("config", "config", (r) => applyConfig(r.config), (msg) => {
    const body = document.createElement("tbody");
    body.insertRow().insertCell().textContent = msg;
    $("limits").replaceChildren(body);
  });
}

function loadModel() {
  return optional("model", "model", (r) => {
    $("model-note").hidden = true;
    figures.renderModel(r.state, r.detail || "no model yet");
  }, (msg) => {
    $("model-note").textContent = msg;
    $("model-note").hidden = false;
    figures.renderModel(null, "runout model not available");
  });
}

function loadImages() {
  return optional("images", "images/latest", (r) => {
    const note = $("image-note");
    if (!r.available) {
      note.textContent = r.detail || "no projection yet";
      note.hidden = false;
      return;
    }
    note.hidden = true;
    $("img-frame").src = r.frame.png_data_url;
    if (r.reference) $("img-reference").src = r.reference.png_data_url;
    else $("img-reference").removeAttribute("src");
    const where = [r.frame_number != null ? `frame ${r.frame_number}` : null,
      r.angle_deg != null ? `${num(r.angle_deg, 2)}°` : null].filter(Boolean).join(" · ");
    $("image-meta").textContent = where;
  }, (msg) => {
    $("image-note").textContent = msg;
    $("image-note").hidden = false;
  });
}

// ------------------------------------------------------------------ control

function setupControl() {
  const out = $("control-result");
  const show = (text, ok) => {
    out.textContent = text;
    out.className = `result ${ok ? "ok" : "bad"}`;
  };
  const act = async (enabled) => {
    const token = $("token").value.trim();
    const reason = $("reason").value.trim();
    if (!token) return show("enter the API token first", false);
    if (!reason) return show("give a reason (it goes to the operator log)", false);
    for (const b of document.querySelectorAll(".buttons button")) b.disabled = true;
    try {
      const r = await setLoop(enabled, token, reason);
      show(`OK: loop ${r.enabled ? "enabled" : "disabled"} (${r.reason})`, true);
      showLoop(r.enabled, r.reason);
    } catch (err) {
      const hint = { 401: "wrong or missing token", 403: "control is off on this service" }[err.status];
      show(`refused: ${err.message}${hint ? ` (${hint})` : ""}`, false);
    } finally {
      for (const b of document.querySelectorAll(".buttons button")) b.disabled = false;
    }
  };
  $("btn-enable").addEventListener("click", () => act(true));
  $("btn-disable").addEventListener("click", () => act(false));
  $("control").addEventListener("submit", (ev) => ev.preventDefault());
}

// ------------------------------------------------------------------ start

function start() {
  figures = new Figures();
  setupControl();
  connectLive(onEnvelope, (up) => badge("badge-link", up ? "LIVE ✓" : "LIVE ✕ reconnecting", up ? "ok" : "bad"));
  setInterval(() => {
    if (!dirty) return;
    dirty = false;
    figures.render(view);
    showLastFrame();
  }, RENDER_MS);
  setInterval(() => { $("clock").textContent = new Date().toLocaleTimeString([], { hour12: false }); }, 1000);
  pollStatus();
  setInterval(pollStatus, 1000);
  loadConfig();
  loadModel();
  setInterval(loadModel, 10000);
  loadImages();
  setInterval(loadImages, 2000);
  window.tomolock = { view }; // for inspection from the browser console
}

start();
