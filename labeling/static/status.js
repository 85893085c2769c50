// sensorloop labeling status view (served as a file: the page's content security policy allows no inline script)
"use strict";
async function refresh() {
  const r = await fetch("/api/status", { credentials: "same-origin" });
  if (!r.ok) return;
  const s = await r.json();
  document.getElementById("waiting").textContent = s.waiting;
  document.getElementById("version").textContent = s.model_version == null ? "–" : "v" + s.model_version;
  document.getElementById("accuracy").textContent = s.recent_accuracy == null ? "–" :
    (100 * s.recent_accuracy).toFixed(1) + " % of " + s.recent_answers;
  const body = document.getElementById("labelers");
  body.replaceChildren();
  for (const [who, n] of Object.entries(s.answers_per_labeler)) {
    const tr = document.createElement("tr");
    for (const v of [who, n]) { const td = document.createElement("td"); td.textContent = v; tr.append(td); }
    body.append(tr);
  }
  const pipeline = document.getElementById("pipeline");
  pipeline.replaceChildren();
  if (s.pipeline_error) document.getElementById("pipeline-note").textContent = "metrics unavailable: " + s.pipeline_error;
  for (const [job, metrics] of Object.entries(s.pipeline || {})) {
    document.getElementById("pipeline-note").textContent = "";
    for (const [name, value] of Object.entries(metrics)) {
      const tr = document.createElement("tr");
      for (const v of [job, name, value]) { const td = document.createElement("td"); td.textContent = v; tr.append(td); }
      pipeline.append(tr);
    }
  }
}
refresh(); setInterval(refresh, 2000);
