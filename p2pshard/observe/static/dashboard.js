// The p2pshard dashboard: polls /api/status once a second and draws what this node sees.
// Hand-written on purpose: no framework, no CDN, no build step; the node serves this file itself.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

// Every string from the network is escaped before it becomes HTML.
function esc(v) { return String(v).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";"); }
function short(id) { return id ? id.slice(0, 8) + "…" + id.slice(-6) : "–"; }
function bytes(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " kB";
  return Math.round(n) + " B";
}
function duration(s) {
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + (s % 60) + "s";
}
function text(el, value) { if (el.textContent !== String(value)) el.textContent = value; }

// A line chart of one or more series of [x, y] points, with axes and a few ticks.
function drawChart(canvas, series, colors, format) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 58, bottom = 24, top = 10, right = 10;
  ctx.clearRect(0, 0, w, h);
  const points = series.flat();
  canvas.dataset.points = String(points.length);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#66717d";
  if (!points.length) { ctx.fillText("waiting for the first round…", left, h / 2); return; }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 = y0 > 0 ? 0 : y0 - 1; y1 = y1 + (Math.abs(y1) || 1) * 0.1; }
  const px = (x) => left + ((x - x0) / (x1 - x0)) * (w - left - right);
  const py = (y) => h - bottom - ((y - y0) / (y1 - y0)) * (h - bottom - top);
  ctx.strokeStyle = "#dde2e7";
  ctx.beginPath();
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    ctx.moveTo(left, py(y)); ctx.lineTo(w - right, py(y));
    ctx.fillText(format(y), 4, py(y) + 4);
  }
  ctx.stroke();
  ctx.fillText("round " + Math.round(x0), left, h - 6);
  ctx.fillText("round " + Math.round(x1), w - right - 60, h - 6);
  series.forEach((pts, i) => {
    ctx.strokeStyle = colors[i]; ctx.fillStyle = colors[i]; ctx.lineWidth = 2;
    ctx.beginPath();
    pts.forEach((p, j) => (j ? ctx.lineTo(px(p[0]), py(p[1])) : ctx.moveTo(px(p[0]), py(p[1]))));
    ctx.stroke();
    pts.forEach((p) => { ctx.beginPath(); ctx.arc(px(p[0]), py(p[1]), 2.5, 0, 2 * Math.PI); ctx.fill(); });
  });
}

function render(s) {
  text($("peer-id"), short(s.peer_id));
  $("peer-id").title = s.peer_id;
  text($("network"), s.network_id);
  text($("uptime"), duration(s.uptime_s));
  const t = s.training, last = s.last_round;
  text($("round"), last ? last.round : t && t.round !== null ? t.round : "–");
  text($("stage"), t ? t.stage + (t.phase ? " · " + t.phase : "") + (t.last_round ? " · of " + t.last_round : "") : "not training");
  text($("contributors"), last ? last.contributors : "–");
  text($("contributed"), last ? (last.contributed ? "ours included" : "ours not included") : "");
  text($("loss"), last && last.loss !== null ? last.loss.toFixed(4) : "–");
  text($("tokens"), last ? Math.round(last.tokens_per_s).toLocaleString() + " tok/s" : "");
  text($("peer-count"), s.peers.length);
  const meshPeers = s.peers.filter((p) => p.in_mesh).length;
  text($("mesh-count"), meshPeers + " in our mesh");
  const m = s.majority;
  text($("majority"), m.hash ? m.hash.slice(0, 16) + "…" : "–");
  text($("majority-detail"), m.hash
    ? `${m.agree} of ${m.of} nodes at round ${m.round}` + (m.ours ? (m.ours_agrees ? " · ours agrees" : " · ours differs") : "")
    : "no model hash heard yet");
  $("majority").className = "value mono " + (m.ours && m.hash ? (m.ours_agrees ? "good" : "bad") : "");

  const rows = s.rounds;
  drawChart($("loss-chart"), [rows.filter((r) => r.loss !== null).map((r) => [r.round, r.loss])], ["#3a7bd5"], (y) => y.toFixed(3));
  drawChart($("bytes-chart"), [rows.map((r) => [r.round, r.sent_in_round]), rows.map((r) => [r.round, r.received_in_round])],
    ["#3a7bd5", "#e08a2c"], bytes);

  const body = $("peers").tBodies[0];
  const html = s.peers.map((p) => {
    const score = p.score === null || p.score === undefined ? "–" : p.score.toFixed(2);
    const model = p.model || [null, null];
    return `<tr data-peer="${esc(p.peer_id)}"><td class="mono" title="${esc(p.peer_id)}">${esc(short(p.peer_id))}</td>` +
      `<td class="num">${score}</td><td>${p.in_mesh ? "yes" : "no"}</td>` +
      `<td class="num">${model[0] === null ? "–" : model[0]}</td><td class="mono">${model[1] ? esc(model[1].slice(0, 16)) + "…" : "–"}</td></tr>`;
  }).join("");
  if (body.innerHTML !== html) body.innerHTML = html;
  const mesh = Object.entries(s.mesh).map(([topic, peers]) =>
    `<li><span class="mono">${esc(topic)}</span>: ${peers.length} peers ${esc(peers.map(short).join(", "))}</li>`).join("");
  if ($("mesh").innerHTML !== mesh) $("mesh").innerHTML = mesh || "<li>no topics</li>";
  const addrs = s.addrs.map((a) => `<li>${esc(a)}</li>`).join("");
  if ($("addrs").innerHTML !== addrs) $("addrs").innerHTML = addrs;
}

async function poll() {
  try {
    const resp = await fetch("/api/status", { cache: "no-store" });
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
    $("conn").textContent = "live";
    $("conn").className = "good";
  } catch (err) {
    $("conn").textContent = "node not answering (" + err.message + ")";
    $("conn").className = "bad";
  }
  setTimeout(poll, POLL_MS);
}

poll();
