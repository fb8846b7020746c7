// The status page's updates: /status/data twice a second, each API's request rate drawn
// from the difference between two reads.
"use strict";

const POLL_MS = 500;
const POINTS = 120;
const rates = new Map();
let previous = null;

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function when(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function sparkline(canvas, points) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const top = Math.max(1, ...points);
  ctx.strokeStyle = "#2563eb";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  points.forEach((p, i) => {
    const x = (i / (POINTS - 1)) * w;
    const y = h - (p / top) * (h - 2) - 1;
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function apiRow(api, rate, history) {
  const row = document.createElement("tr");
  const name = document.createElement("td");
  name.textContent = api.api_id === "" ? "(no API)" : api.api_id;
  const perSecond = document.createElement("td");
  perSecond.textContent = rate.toFixed(1);
  const chart = document.createElement("td");
  const canvas = document.createElement("canvas");
  canvas.width = 160;
  canvas.height = 28;
  chart.appendChild(canvas);
  const mix = document.createElement("td");
  const bar = document.createElement("div");
  bar.className = "mix";
  for (const [cls, css] of [["2xx", "c2"], ["3xx", "c3"], ["4xx", "c4"], ["5xx", "c5"]]) {
    const part = document.createElement("span");
    part.className = css;
    part.style.width = (api.requests ? (100 * api.classes[cls]) / api.requests : 0) + "%";
    part.title = cls + ": " + api.classes[cls];
    bar.appendChild(part);
  }
  mix.appendChild(bar);
  const total = document.createElement("td");
  total.textContent = api.requests;
  row.append(name, perSecond, chart, mix, total);
  sparkline(canvas, history);
  return row;
}

function render(data) {
  text("version", data.version);
  text("updated", when(data.time));
  text("connections", data.connections);
  const store = data.store;
  text("mode", store.mode);
  text("master", store.master ?? "none");
  const reachable = document.getElementById("reachable");
  reachable.textContent = store.reachable ? "yes" : "no";
  reachable.className = store.reachable ? "ok" : "bad";
  text("replicas", store.replicas.length ? store.replicas.join(", ") : "none");
  text("sentinels", store.sentinels.length ? store.sentinels.join(", ") : "none");
  text("changes", store.master_changes);
  const history = document.getElementById("history");
  history.replaceChildren(...store.history.slice().reverse().map((h) => {
    const item = document.createElement("li");
    item.textContent = when(h.at) + " — " + h.master;
    return item;
  }));
  const rows = data.apis.map((api) => {
    const before = previous && previous.apis.find((a) => a.api_id === api.api_id);
    const seconds = previous ? Math.max(0.001, data.time - previous.time) : 1;
    const rate = before ? Math.max(0, api.requests - before.requests) / seconds : 0;
    const points = rates.get(api.api_id) ?? new Array(POINTS).fill(0);
    points.push(rate);
    points.splice(0, points.length - POINTS);
    rates.set(api.api_id, points);
    return apiRow(api, rate, points);
  });
  document.getElementById("apis").replaceChildren(...rows);
  const cache = data.cache;
  text("hits", cache ? cache.hits : "–");
  text("misses", cache ? cache.misses : "–");
  text("stale", cache ? cache.stale_serves : "–");
  text("entries", cache ? cache.entries : "–");
  text("replica-reads", store.replica_reads);
  text("leases", data.limiter.leases);
  previous = data;
}

async function poll() {
  try {
    const response = await fetch("/status/data", { cache: "no-store" });
    if (response.ok) {
      render(await response.json());
    } else if (response.status === 403) {
      location.href = "/status";
      return;
    }
  } catch (e) {
    text("updated", "unreachable (" + e + ")");
  }
  setTimeout(poll, POLL_MS);
}

poll();
