// The edgeinfer status page: polls /api/status every second and draws it.
// It keeps polling through a broker outage (the module answers) and while the
// module itself is unreachable (it says so, and shows the last figures it had).
"use strict";

const POLL_MS = 1000;
const TIMEOUT_MS = 3000;
const COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"];
const charts = {};
let errorReasons = "";

function $(id) { return document.getElementById(id); }

function set(id, text) {
  const el = $(id);
  if (el.textContent !== text) el.textContent = text;
}

function number(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-US", {maximumFractionDigits: digits, minimumFractionDigits: digits});
}

function last(column) { return column && column.length ? column[column.length - 1] : null; }

function sum(values) { return Object.values(values || {}).reduce((a, b) => a + b, 0); }

function localTime(at, precise = false) {
  const when = typeof at === "number" ? new Date(at * 1000) : new Date(at);
  const shown = when.toLocaleTimeString([], {hour12: false});
  // An update's steps often come within one second: the timeline shows milliseconds.
  return precise ? shown + "." + String(when.getMilliseconds()).padStart(3, "0") : shown;
}

function chart(id, labels, yLabel) {
  const el = $(id);
  const width = Math.max(300, el.clientWidth || 600);
  const series = [{}].concat(labels.map((label, i) => ({
    label, stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: false,
  })));
  const opts = {
    width, height: 200, series, legend: {live: false},
    scales: {x: {time: true}, y: {range: (u, min, max) => [0, Math.max(1, max * 1.1)]}},
    axes: [{}, {label: yLabel, size: 56}],
  };
  el.textContent = "";
  return new uPlot(opts, [[]].concat(labels.map(() => [])), el);
}

function draw(id, labels, yLabel, data) {
  const key = labels.join("|");
  if (!charts[id] || charts[id].key !== key) {
    if (charts[id]) charts[id].plot.destroy();
    charts[id] = {key, plot: chart(id, labels, yLabel)};
  }
  charts[id].plot.setData(data);
}

function showCharts(series) {
  const t = series.t;
  draw("chart-throughput", ["readings/s", "results/s"], "per s",
       [t, series.readings_per_s, series.results_per_s]);
  const reasons = Object.keys(series.errors_per_s).sort();
  if (reasons.length) {
    draw("chart-errors", reasons, "per s", [t].concat(reasons.map((r) => series.errors_per_s[r])));
  } else {
    draw("chart-errors", ["errors"], "per s", [t, t.map(() => 0)]);
  }
  draw("chart-latency", ["p50", "p99"], "ms", [t, series.p50_ms, series.p99_ms]);
  draw("chart-queue", ["queued", "unacknowledged"], "readings", [t, series.queue_depth, series.unacked]);
}

function showFacts(s) {
  set("module-id", s.module_id);
  set("labels", Object.entries(s.labels || {}).map(([k, v]) => `${k}=${v}`).join(" "));
  const model = s.model || {};
  set("model-name", model.name || "no model");
  set("model-version", model.version || "–");
  set("model-runtime", [model.format, model.runtime].filter(Boolean).join(" · "));
  set("model-activated", model.activated_at ? "serving since " + localTime(model.activated_at) : "");
  const b = s.batch;
  set("batching", `up to ${b.max_batch} readings a run, waiting at most ${b.max_delay_ms} ms`);
  set("mean-batch", s.totals.mean_batch === null ? "no batch run yet"
      : `${number(s.totals.mean_batch, 2)} readings a run on average (${number(s.totals.batches)} runs)`);
  const broker = s.broker;
  set("broker-state", broker.connected ? "connected" : "disconnected");
  $("broker-state").className = broker.connected ? "ok" : "bad";
  set("broker-detail", broker.connected ? broker.address : `${broker.address}: ${broker.last_error || ""}`);
  set("ready-state", s.ready.ready ? "ready" : "not ready");
  $("ready-state").className = s.ready.ready ? "ok" : "bad";
  set("ready-reason", s.ready.ready ? "" : s.ready.reason);
}

function showFigures(s) {
  const f = s.series;
  set("readings-rate", number(last(f.readings_per_s), 1));
  set("results-rate", number(last(f.results_per_s), 1));
  const errorsNow = Object.values(f.errors_per_s).map(last);
  set("errors-rate", number(errorsNow.reduce((a, b) => a + (b || 0), 0), 1));
  const p50 = last(f.p50_ms), p99 = last(f.p99_ms);
  set("p50", p50 === null ? "–" : number(p50, 2) + " ms");
  set("p99", p99 === null ? "–" : number(p99, 2) + " ms");
  set("queue", `${number(s.queue.depth)} / ${number(s.queue.capacity)}`);
  set("unacked", number(s.queue.unacked));
  set("backpressure", number(s.queue.backpressure_waits));
  const t = s.totals;
  set("readings-total", number(t.readings));
  set("results-total", number(t.results));
  set("errors-total", number(sum(t.errors)));
  set("refused-total", number(sum(t.publish_refused)));
  set("predictions-total", number(sum(t.predictions)));
  const reasons = Object.entries(t.errors).map(([r, n]) => `${r}: ${number(n)}`).join(", ");
  if (reasons !== errorReasons) { errorReasons = reasons; set("errors-by-reason", reasons); }
}

function showUpdates(s) {
  const u = s.update;
  const target = u.target ? ` → ${u.target.name} ${u.target.version}` : "";
  set("update-state", u.state + target);
  $("update-state").className = "state " + ({failed: "bad", rolled_back: "bad", active: "ok"}[u.state] || "warn");
  const bar = $("update-progress");
  bar.hidden = !(u.state === "downloading" && u.progress !== null);
  if (!bar.hidden) bar.value = u.progress;
  const items = s.history.slice().reverse().map((step) => {
    const li = document.createElement("li");
    li.dataset.state = step.state;
    const when = document.createElement("time");
    when.textContent = localTime(step.at, true);
    li.append(when, step.state + (step.target ? ` ${step.target.name} ${step.target.version}` : ""));
    if (step.error) {
      const why = document.createElement("span");
      why.className = "bad";
      why.textContent = " — " + step.error;
      li.append(why);
    }
    return li;
  });
  const list = $("update-timeline");
  const key = JSON.stringify(s.history);
  if (list.dataset.key !== key) { list.dataset.key = key; list.replaceChildren(...items); }
}

function showRollout(s) {
  const r = s.rollout;
  $("rollout").hidden = !r;
  if (!r) return;
  const candidate = r.candidate ? `${r.candidate.name} ${r.candidate.version}` : "";
  const step = Array.isArray(r.steps) && r.steps.length && r.step !== null && r.step !== undefined
    ? ` · step ${r.step + 1} of ${r.steps.length}` : "";
  const verdict = r.verdict ? `${r.verdict}${r.reason ? " (" + r.reason + ")" : ""}` : "pending";
  set("rollout-summary", `${r.mode} of ${candidate}${step} · ${number(r.percent, 1)}% · verdict ${verdict}`);
  const rows = [];
  for (const [version, c] of Object.entries(r.counts || {})) {
    const p95 = c.p95_ms === null || c.p95_ms === undefined ? "–" : number(c.p95_ms, 2) + " ms";
    rows.push([`${version}`, `${number(c.answered)} answered, ${number(c.errors)} errors, p95 ${p95}`]);
  }
  for (const [gate, g] of Object.entries(r.gates || {})) {
    const value = g && typeof g === "object" ? g.value : g;
    const limit = g && typeof g === "object" && g.limit !== null && g.limit !== undefined
      ? ` (limit ${g.limit})` : "";
    rows.push([`gate ${gate}`, `${value === null || value === undefined ? "–" : value}${limit}`]);
  }
  $("rollout-gates").replaceChildren(...rows.map(([name, text]) => {
    const tr = document.createElement("tr");
    const left = document.createElement("td"); left.textContent = name;
    const right = document.createElement("td"); right.textContent = text;
    tr.append(left, right);
    return tr;
  }));
}

function banner(kind, text) {
  const el = $("banner");
  el.className = "banner " + kind;
  set("banner", text);
}

function show(s) {
  showFacts(s);
  showFigures(s);
  showCharts(s.series);
  showUpdates(s);
  showRollout(s);
  if (s.ready.ready) banner("ok", "serving");
  else banner(s.broker.connected ? "wait" : "bad", "not ready: " + s.ready.reason);
  set("updated-at", "updated " + localTime(s.ts));
}

async function poll() {
  try { await pollOnce(); } finally { setTimeout(poll, POLL_MS); }  // one request at a time
}

async function pollOnce() {
  const headers = {};
  const token = sessionStorage.getItem("edgeinfer-token");
  if (token) headers.Authorization = "Bearer " + token;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let status = null;
  try {
    const answer = await fetch("/api/status", {headers, signal: abort.signal, cache: "no-store"});
    if (answer.status === 200) status = await answer.json();
    else banner("bad", `the module answered ${answer.status}: ${(await answer.text()).slice(0, 200)}`);
  } catch (err) {  // only the request: a mistake in drawing is not an outage
    banner("bad", "the module is unreachable; retrying (" + (err.name || "error") + ")");
  } finally {
    clearTimeout(timer);
  }
  if (status) show(status);
}

window.addEventListener("resize", () => {
  for (const id in charts) {
    const el = $(id);
    charts[id].plot.setSize({width: Math.max(300, el.clientWidth), height: 200});
  }
});
poll();
