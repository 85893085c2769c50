// sensorloop labeling page. Everything from a request is shown with textContent or SVG
// attributes set through the DOM API: no request data is ever parsed as HTML.
"use strict";
const COLOURS = ["#2f6fd6", "#d6452f", "#2f9e44", "#b8860b", "#7b3fd6", "#0b8a8a", "#c2185b", "#555"];
const SVG = "http://www.w3.org/2000/svg";
let current = null;
let classes = [];
let busy = false;
let chosen = "";  // the class picked on an anomaly question, sent with the verdict

const $ = (id) => document.getElementById(id);
// who the labeler is comes from their token (the server says it with every request), never from the page

function text(id, value) { $(id).textContent = value; }
function svgEl(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}
function showError(message) { const e = $("error"); e.textContent = message; e.classList.remove("hidden"); }
function clearError() { $("error").classList.add("hidden"); }

function drawChart(values, channels, start, end, typical) {
  const svg = $("chart");
  svg.replaceChildren();
  const W = 900, H = 320, L = 56, R = 12, T = 12, B = 34;
  const flat = values.flat().concat(typical ? typical.flat() : []);
  let lo = Math.min(...flat), hi = Math.max(...flat);
  if (hi === lo) { hi += 1; lo -= 1; }
  const n = values.length;
  const x = (i) => L + (i / Math.max(1, n - 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const seconds = (end - start) / 1000;
  for (let k = 0; k <= 4; k++) {  // horizontal grid and value axis
    const v = lo + (k / 4) * (hi - lo);
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e6ec" }));
    const label = svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#556" });
    label.textContent = v.toFixed(2);
    svg.append(label);
  }
  for (let k = 0; k <= 4; k++) {  // time axis
    const i = (k / 4) * (n - 1);
    const label = svgEl("text", { x: x(i), y: H - 12, "text-anchor": "middle", "font-size": 11, fill: "#556" });
    label.textContent = ((k / 4) * seconds).toFixed(1) + " s";
    svg.append(label);
  }
  if (typical) {  // each channel's typical range (normal windows' 1st-99th percentile), behind its line
    typical.forEach(([low, high], c) => {
      svg.append(svgEl("rect", { x: L, width: W - L - R, y: y(high), height: Math.max(1, y(low) - y(high)),
                                 fill: COLOURS[c % COLOURS.length], "fill-opacity": 0.08, "data-typical": c }));
    });
  }
  svg.append(svgEl("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#889" }));
  svg.append(svgEl("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#889" }));
  const legend = $("legend");
  legend.replaceChildren();
  channels.forEach((name, c) => {
    const points = values.map((row, i) => `${x(i).toFixed(1)},${y(row[c]).toFixed(1)}`).join(" ");
    svg.append(svgEl("polyline", { points, fill: "none", stroke: COLOURS[c % COLOURS.length], "stroke-width": 1.6,
                                   "data-channel": c }));
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLOURS[c % COLOURS.length];
    item.append(swatch, document.createTextNode(name));
    legend.append(item);
  });
}

function keyedButton(text, key, data, onClick) {  // a button with its keyboard shortcut shown first
  const b = document.createElement("button");
  Object.assign(b.dataset, data);
  const k = document.createElement("kbd"); k.textContent = key;
  b.append(k, document.createTextNode(text));
  b.addEventListener("click", onClick);
  return b;
}

function render(data) {
  text("waiting", data.waiting);
  classes = data.classes;
  current = data.request;
  $("review").classList.toggle("hidden", !current);
  $("empty").classList.toggle("hidden", !!current);
  if (!current) return;
  text("device", current.device_id);
  text("time", new Date(current.window_start).toISOString().replace("T", " ").slice(0, 19) + " UTC");
  const classifies = current.predicted !== undefined && current.predicted !== null;
  text("predicted", classifies ? current.predicted : "–");
  text("confidence", classifies ? (100 * current.confidence).toFixed(1) + " %" : "–");
  const asksAnomaly = current.anomaly !== undefined && current.anomaly !== null;
  $("anomaly-row").classList.toggle("hidden", !asksAnomaly);
  text("anomaly", asksAnomaly ? current.anomaly.toFixed(2) : "");
  text("reason", current.reason);
  text("version", (current.model_name ? current.model_name + " " : "") + "v" + current.model_version);
  text("review-id", current.review_id);
  text("lease", data.lease_expires_in_s + " s");
  const top = Object.entries(current.probabilities || {}).sort((a, b) => b[1] - a[1]).slice(0, 3);
  text("top", top.length ? "top classes: " + top.map(([c, p]) => `${c} ${(100 * p).toFixed(1)} %`).join(" · ") : "");
  drawChart(current.values, current.channels, current.window_start, current.window_end, current.typical_range);
  const verdicts = $("verdicts");
  verdicts.replaceChildren();
  verdicts.classList.toggle("hidden", !asksAnomaly);
  if (asksAnomaly) {  // "is this window abnormal?": a class may be picked first where the model classifies
    const ask = document.createElement("span");
    ask.textContent = "Is this window abnormal?" + (classes.length ? " (pick its class first if you know it)" : "");
    verdicts.append(ask);
    for (const [verdict, key] of [["abnormal", "a"], ["normal", "n"]]) {
      verdicts.append(keyedButton(verdict, key, { verdict }, () => submit(chosen, "answered", false, verdict)));
    }
  }
  chosen = "";
  const buttons = $("buttons");
  buttons.replaceChildren();
  classes.forEach((c, i) => {
    const b = document.createElement("button");
    b.className = "cls" + (c === current.predicted ? " predicted" : "");
    b.dataset.label = c;
    if (i < 9) { const k = document.createElement("kbd"); k.textContent = String(i + 1); b.append(k); }
    b.append(document.createTextNode(c));
    b.addEventListener("click", () => (asksAnomaly ? choose(c) : submit(c, "answered")));
    buttons.append(b);
  });
  for (const [label, status, key] of [["skip", "skipped", "s"], ["not sure", "unsure", "u"]]) {
    buttons.append(keyedButton(label, key, { status }, () => submit("", status)));
  }
  $("new-class").classList.toggle("hidden", !data.may_name_classes);
  $("new-class-name").value = "";
}

function choose(c) {  // on an anomaly question a class button marks the class; a verdict button sends both
  chosen = chosen === c ? "" : c;
  for (const b of $("buttons").querySelectorAll("button.cls")) b.classList.toggle("chosen", b.dataset.label === chosen);
}

function submitNewClass(event) {
  event.preventDefault();
  const name = $("new-class-name").value.trim();
  if (!name) { showError("Type the new class's name first."); return; }
  submit(name, "answered", true);
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function load() {
  try {
    const next = await api("/api/next");
    text("who", next.labeler);
    render(next);
    clearError();
  } catch (e) { showError("Could not load the next request: " + e.message); }
}

async function submit(label, status, newClass = false, verdict = null) {
  if (!current || busy) return;
  busy = true;
  const body = { review_id: current.review_id, label, status, new_class: newClass };
  if (verdict) body.verdict = verdict;
  try {
    await api("/api/answer", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    clearError();
    await load();
  } catch (e) { showError("Answer refused: " + e.message); }
  finally { busy = false; }
}

document.addEventListener("keydown", (event) => {
  if (!current || event.target.tagName === "INPUT") return;
  const n = Number(event.key);
  const asksAnomaly = current.anomaly !== undefined && current.anomaly !== null;
  if (n >= 1 && n <= classes.length) (asksAnomaly ? choose(classes[n - 1]) : submit(classes[n - 1], "answered"));
  else if (asksAnomaly && event.key === "a") submit(chosen, "answered", false, "abnormal");
  else if (asksAnomaly && event.key === "n") submit(chosen, "answered", false, "normal");
  else if (event.key === "s") submit("", "skipped");
  else if (event.key === "u") submit("", "unsure");
});

$("new-class").addEventListener("submit", submitNewClass);
load();
setInterval(() => { if (!current && !busy) load(); else api("/api/status").then((s) => text("waiting", s.waiting)).catch(() => {}); }, 2000);
