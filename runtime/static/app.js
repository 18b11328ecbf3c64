// fsac-run live view: plain JavaScript, no build step, no library. Reads the server-sent
// event stream /events (one JSON snapshot at most 4 times a second) and draws the page.
"use strict";
const $ = (id) => document.getElementById(id);
const MAX_POINTS = 300;
let points = [];          // [journal index, logit or null, verdict]
let lastIndex = -1;
let snap = null;
let latestKey = null, latestShownAt = 0;
let detailKey = null;

function fmt(x, d = 4) { return (x === null || x === undefined) ? "–" : Number(x).toPrecision(d); }
function pct(x) { return (x === null || x === undefined) ? "–" : (100 * x).toFixed(x < 0.01 ? 2 : 1) + " %"; }
function esc(s) { return String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
function rows(table, pairs) {
  $(table).innerHTML = pairs.map(([k, v, cls]) => `<tr><th>${esc(k)}</th><td class="${cls || ""}">${esc(v)}</td></tr>`).join("");
}
function say(text) {
  const m = $("message"); m.textContent = text; m.style.display = "block";
  clearTimeout(say.t); say.t = setTimeout(() => { m.style.display = "none"; }, 4000);
}

async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"X-Fsac": "1", "Content-Type": "application/json"},
                               body: JSON.stringify(body || {})});
  const j = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

function drawChart(threshold) {
  const W = 600, H = 220, vals = points.map((p) => p[1]).filter((z) => z !== null);
  if (threshold !== null && threshold !== undefined) vals.push(threshold);
  if (!vals.length) return;
  let lo = Math.min(...vals), hi = Math.max(...vals);
  const pad = (hi - lo) * 0.1 || 1; lo -= pad; hi += pad;
  const y = (z) => H - ((z - lo) / (hi - lo)) * H;
  const n = points.length, x = (i) => n > 1 ? (i / (n - 1)) * W : W / 2;  // fills the width, then scrolls
  const coords = [], dots = [];
  points.forEach((p, i) => {
    if (p[1] === null) return;
    coords.push(`${x(i).toFixed(1)},${y(p[1]).toFixed(1)}`);
    if (p[2] === "defective") dots.push(`<circle cx="${x(i).toFixed(1)}" cy="${y(p[1]).toFixed(1)}" r="3"></circle>`);
  });
  $("logit-line").setAttribute("points", coords.join(" "));
  $("chart").dataset.points = String(coords.length);
  $("defect-dots").innerHTML = dots.join("");
  if (threshold !== null && threshold !== undefined) {
    const ty = y(threshold).toFixed(1);
    for (const a of ["y1", "y2"]) $("threshold-line").setAttribute(a, ty);
    $("threshold-label").style.top = `${Math.max(0, ty - 16)}px`;  // the chart is H px high
    $("threshold-label").textContent = `threshold ${fmt(threshold)}`;
  }
  $("y-max").textContent = fmt(hi, 3); $("y-min").textContent = fmt(lo, 3);
}

function showLatest(s) {
  const r = s.latest;
  if (!r) return;
  const v = $("verdict");
  v.textContent = r.verdict; v.className = "verdict " + r.verdict;
  $("score").textContent = fmt(r.score); $("logit").textContent = fmt(r.logit);
  $("part").textContent = r.part_id ?? r.name ?? `frame ${r.frame_id}`;
  $("latest-time").textContent = r.time; $("latest-error").textContent = r.error || "";
  const now = Date.now();
  if (s.latest_key !== latestKey && now - latestShownAt > 500) {  // at most 2 images a second
    latestKey = s.latest_key; latestShownAt = now;
    $("no-image").hidden = s.latest_has_image; $("latest-img").hidden = !s.latest_has_image;
    if (s.latest_has_image) $("latest-img").src = `frame/${latestKey}.jpg?w=640`;
  }
}

function showDefects(list) {
  const html = list.map((d) => {
    const r = d.record, img = d.has_image ? `<img loading="lazy" src="frame/${d.key}.jpg?w=180" alt="">` : "<div class=small>no image</div>";
    return `<figure data-key="${esc(d.key)}">${img}<figcaption>${esc(r.part_id ?? r.name ?? r.frame_id)} · ${fmt(r.logit, 3)}</figcaption></figure>`;
  }).join("");
  if ($("defects").dataset.html !== html) { $("defects").innerHTML = html; $("defects").dataset.html = html; }
}

function showRecal(s) {
  const j = s.recalibration, m = s.model;
  $("btn-recalibrate").disabled = !s.can_recalibrate || j.status === "running";
  $("btn-recalibrate").title = s.can_recalibrate ? "" : "set live.calibration_images to re-calibrate here";
  const fb = s.feedback;
  $("feedback-counts").textContent = `${fb.false_alarm} false alarm(s), ${fb.confirmed_defect} confirmed defect(s)`;
  let text = j.status;
  if (j.status === "running") text = `running: scoring the calibration set and ${j.feedback_images} false alarm(s)…`;
  if (j.status === "failed") text = `failed: ${j.error}`;
  if (j.status === "done") text = `done: ${j.model}`;
  if (j.status === "activated") text = `activated: ${j.model}`;
  $("recal-status").textContent = text;
  const show = j.status === "done" || j.status === "activated";
  $("recal-table").hidden = !show;
  $("btn-activate").hidden = j.status !== "done";
  if (show) {
    $("recal-old").textContent = fmt(j.old_logit_threshold, 6); $("recal-old-score").textContent = fmt(j.old_threshold, 6);
    $("recal-old-fpr").textContent = pct(j.old_expected_fpr);
    $("recal-new").textContent = fmt(j.logit_threshold, 6); $("recal-new-score").textContent = fmt(j.threshold, 6);
    $("recal-fpr").textContent = pct(j.expected_fpr) + ` (n = ${j.n_normal})`;
  }
}

function render(s) {
  snap = s;
  $("conn").textContent = s.ready ? "live" : `not ready: ${s.not_ready}`;
  $("paused-banner").hidden = !s.paused; $("btn-pause").hidden = s.paused; $("btn-resume").hidden = !s.paused;
  const fresh = s.points.filter((p) => p[0] > lastIndex);
  if (s.points.length && s.points[0][0] <= lastIndex && fresh.length === s.points.length) points = [];
  points = points.concat(fresh).slice(-MAX_POINTS);
  if (points.length) lastIndex = points[points.length - 1][0];
  drawChart(s.model.logit_threshold);
  showLatest(s);
  showDefects(s.defects);
  const c = s.counts;
  rows("counts", [["frames", c.frames], ["rate", `${c.fps.toFixed(1)} frames/s`], ["defects", `${c.defects} (${pct(c.defect_rate)})`],
                  ["errors", `${c.errors} (${pct(c.error_rate)})`], ["dropped", `${c.dropped} (${pct(c.dropped_rate)} of read)`], ["read", c.read]]);
  const m = s.model;
  $("model-name").textContent = `· ${m.object} · ${m.name}`;
  rows("model", [["file", m.name], ["sha256", m.sha256.slice(0, 16) + "…"], ["object", m.object], ["arch", m.arch],
                 ["recipe", m.recipe], ["trained as", [m.preset, m.precision].filter(Boolean).join(", ")],
                 ["logit threshold", `${fmt(m.logit_threshold, 6)} (${m.threshold_source})`],
                 ["score threshold", fmt(m.threshold, 6)], ["expected false alarms", pct(m.expected_fpr)], ["backend", m.backend]]);
  const src = s.source;
  rows("health", [["source", `${src.kind} ${src.label}`, ""], ["source state", src.connected ? "open" : "closed", src.connected ? "ok" : "bad"],
                  ["reconnects", src.reconnects], ["journal", pct(s.journal_fill) + " full", s.journal_fill > 0.9 ? "bad" : "ok"],
                  ...s.sinks.map((k) => [`sink ${k.name}`, k.ok ? (k.pending !== undefined ? `ok, ${k.pending} pending` : "ok") : `FAILING: ${k.error}`, k.ok ? "ok" : "bad"])]);
  $("alarms").innerHTML = s.alarms.map((a) => `<div class="${a.kind}"><b>${a.kind === "drift" ? "Drift" : "Input"}:</b> ${esc(a.text)}</div>`).join("");
  showRecal(s);
}

function openDetail(key) {
  const d = snap && snap.defects.find((x) => x.key === key);
  if (!d) return;
  detailKey = key;
  $("detail-img").src = `frame/${key}.jpg?w=1600`;
  $("detail-record").textContent = JSON.stringify(d.record, null, 2);
  $("detail").showModal();
}

async function mark(label, target) {
  const key = target === "detail" ? detailKey : (snap && snap.latest_key);
  if (!key) return;
  try {
    const j = await post("api/feedback", {key, label});
    say(`saved as ${label.replace("_", " ")}: ${j.saved}`);
    $("message").dataset.saved = j.saved;
  } catch (e) { say(`not saved: ${e.message}`); }
}

document.addEventListener("click", (ev) => {
  const fig = ev.target.closest("figure[data-key]");
  if (fig) openDetail(fig.dataset.key);
  const b = ev.target.closest("button.mark");
  if (b) mark(b.dataset.label, b.dataset.target);
});
$("detail-close").onclick = () => $("detail").close();
$("btn-pause").onclick = () => post("api/pause").then(() => say("scoring paused")).catch((e) => say(e.message));
$("btn-resume").onclick = () => post("api/resume").then(() => say("scoring resumed")).catch((e) => say(e.message));
$("btn-recalibrate").onclick = () => post("api/recalibrate").then(() => say("re-calibration started")).catch((e) => say(e.message));
$("btn-activate").onclick = () => {
  const j = snap.recalibration;
  post("api/activate", {model: j.model}).then(() => say(`activated ${j.model}`)).catch((e) => say(`not activated: ${e.message}`));
};

const es = new EventSource("events");
es.onmessage = (e) => render(JSON.parse(e.data));
es.onerror = () => { $("conn").textContent = "reconnecting… (at most 2 live views at once)"; };
// An undecodable frame (error record) may have no picture to show.
$("latest-img").onerror = () => { $("latest-img").hidden = true; $("no-image").hidden = false; };
