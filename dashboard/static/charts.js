// callrelay dashboard: the last hour, drawn on canvases by the page itself
// (no library). app.js feeds it: load() with /api/history, add() with each
// second the event stream brings. Hovering any chart sets the time cursor:
// every panel then shows that second. Values reach the page through
// textContent only.
"use strict";

window.CallrelayCharts = (function () {
  const N = 3600; // seconds kept, as the dashboard keeps them
  const classNames = ["unclassified", "new group call", "new 1:1 call", "new group member", "second party", "rejoin"];
  const classColors = ["#95a5a6", "#2e86de", "#16a085", "#8e44ad", "#d4a017", "#7f8c8d"];
  const refusedColors = ["#e6b0aa", "#c0392b", "#e74c3c", "#922b21", "#d35400", "#6b1111"];
  const levelColors = ["#1b7f3b", "#d4a017", "#e67e22", "#d35400", "#c0392b"];
  const noData = "#eceff2";

  // series: name -> ring of PointView (index sec % N); strips: id -> ring
  // of levels (-1 none, -2 never written).
  const series = new Map();
  const strips = new Map();
  let end = 0; // the latest second held
  let span = 900; // seconds shown
  let cursor = null; // the second under the pointer, null: follow the latest
  let seriesName = "*";
  let rows = []; // forwarder ids of the heat strip, top first
  let panels = {};
  let pending = false;

  const ring = (name) => {
    let r = series.get(name);
    if (!r) {
      r = new Array(N).fill(null);
      series.set(name, r);
    }
    return r;
  };
  const strip = (id) => {
    let s = strips.get(id);
    if (!s) {
      s = new Int8Array(N).fill(-2);
      strips.set(id, s);
    }
    return s;
  };
  const idx = (sec) => ((sec % N) + N) % N;
  const at = (name, sec) => {
    const r = series.get(name);
    const p = r && r[idx(sec)];
    return p && p.sec === sec ? p : null;
  };

  // load takes /api/history.
  function load(h) {
    for (const [name, pts] of Object.entries(h.series)) {
      const r = ring(name);
      for (const p of pts) if (p.sec) r[idx(p.sec)] = p;
    }
    const first = h.end - h.len + 1;
    for (const f of h.forwarders) {
      const s = strip(f.id);
      let sec = first;
      for (const run of f.levels.split(",")) {
        const [l, n] = run.split("*");
        const level = l === "-" ? -1 : Number(l);
        for (let i = 0; i < Number(n); i++, sec++) s[idx(sec)] = level;
      }
    }
    end = Math.max(end, h.end);
    redraw();
  }

  // add takes one second: the stream's points by series, and the cells as
  // they are now (each forwarder's level for the heat strip).
  function add(point, cells) {
    let sec = 0;
    for (const [name, p] of Object.entries(point || {})) {
      ring(name)[idx(p.sec)] = p;
      sec = Math.max(sec, p.sec);
    }
    if (!sec) return;
    for (const c of cells.values()) strip(c.id)[idx(sec)] = c.u ? c.l : -1;
    for (const [id, s] of strips) if (!cells.has(id)) s[idx(sec)] = -1;
    end = Math.max(end, sec);
    redraw();
  }

  function setView(name, ids, seconds) {
    seriesName = name;
    rows = ids;
    span = seconds;
    redraw();
  }

  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  }

  // ---- panels -------------------------------------------------------------

  // init finds the panels: div.panel[data-panel] each with a canvas and a
  // .readout.
  function init() {
    for (const div of document.querySelectorAll(".panel[data-panel]")) {
      const c = div.querySelector("canvas");
      panels[div.dataset.panel] = { div, canvas: c, readout: div.querySelector(".readout") };
      if (!c) continue;
      c.addEventListener("mousemove", (ev) => {
        const r = c.getBoundingClientRect();
        const x = Math.min(Math.max(ev.clientX - r.left, 0), r.width - 1);
        cursor = end - span + 1 + Math.floor((x / r.width) * span);
        redraw();
      });
      c.addEventListener("mouseleave", () => {
        cursor = null;
        redraw();
      });
    }
  }

  function setup(p, height) {
    const c = p.canvas;
    const w = Math.max(200, Math.floor(c.clientWidth || c.parentNode.clientWidth || 600));
    if (c.width !== w) c.width = w;
    if (c.height !== height) c.height = height;
    const g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    return g;
  }

  const first = () => end - span + 1;
  const xOf = (c, sec) => ((sec - first()) / span) * c.width;
  const bw = (c) => Math.max(1, c.width / span);
  const time = (sec) => new Date(sec * 1000).toLocaleTimeString();

  function drawCursor(p, sec) {
    const c = p.canvas, g = c.getContext("2d");
    g.fillStyle = "rgba(0,0,0,.55)";
    g.fillRect(Math.floor(xOf(c, sec)), 0, 1, c.height);
  }

  function readout(p, sec, text) {
    p.readout.dataset.sec = sec;
    p.readout.textContent = time(sec) + " — " + text;
  }

  function draw() {
    if (!end) return;
    const sec = cursor === null ? end : cursor;
    const label = document.getElementById("cursor-time");
    if (label) label.textContent = cursor === null ? "latest second: " + time(end) + " (hover a chart to move the cursor)" : "cursor: " + time(sec);
    if (label) label.dataset.sec = sec;
    heat(panels.heat, sec);
    joins(panels.joins, sec);
    success(panels.success, sec);
    line(panels.load, sec, [{ v: (p) => (p.loadMax >= 0 ? p.loadMax / 10 : null), color: "#d35400" }], 100,
      (p) => (p && p.loadMax >= 0 ? (p.loadMax / 10).toFixed(1) + "% of capacity, worst signal: " + p.worst.replace("_", " ") +
        " · " + p.up + " up, " + p.throttling + " throttling" : "no forwarder up"));
    line(panels.nack, sec, [{ v: (p) => p.nacked, color: "#c0392b" }, { v: (p) => p.resent, color: "#2e86de" }], 1,
      (p) => (p ? p.nacked + " NACKed/s, " + p.resent + " resent/s" : "no data"));
    line(panels.redis, sec, [{ v: (p) => (p.storeMs >= 0 ? p.storeMs : null), color: "#8e44ad" }], 1,
      (p) => (p && p.storeMs >= 0 ? p.storeMs.toFixed(2) + " ms mean Redis write" : "no Redis write measured in that second"));
    line(panels.nats, sec, [{ v: (p) => (p.rttMs >= 0 ? p.rttMs : null), color: "#16a085" }], 1,
      (p) => (p && p.rttMs >= 0 ? p.rttMs.toFixed(2) + " ms mean NATS round trip" : "no round trip measured in that second"));
    line(panels.decision, sec, [{ v: (p) => (p.decideP50Ms >= 0 ? p.decideP50Ms : null), color: "#2e86de" },
      { v: (p) => (p.decideP99Ms >= 0 ? p.decideP99Ms : null), color: "#c0392b" }], 1,
      (p) => (p && p.decideP99Ms >= 0 ? "p50 " + p.decideP50Ms.toFixed(1) + " ms, p99 " + p.decideP99Ms.toFixed(1) +
        " ms (slowest conductor) · " + Math.round(p.decisions) + " decisions/s · " + p.conductors + " conductor(s)" :
        "no conductor report in that second"));
  }

  function heat(p, sec) {
    if (!p) return;
    const rh = Math.max(1, Math.min(6, Math.floor(240 / Math.max(1, rows.length))));
    const c = p.canvas, g = setup(p, Math.max(12, rows.length * rh)), w = bw(c);
    const f = first();
    rows.forEach((id, i) => {
      const s = strips.get(id);
      let runStart = f, runLevel = null;
      const fill = (from, to, l) => {
        g.fillStyle = l >= 0 ? levelColors[l] : noData;
        g.fillRect(xOf(c, from), i * rh, xOf(c, to + 1) - xOf(c, from) + 0.5, rh);
      };
      for (let x = f; x <= end; x++) {
        const l = s ? s[idx(x)] : -1;
        if (l !== runLevel) {
          if (runLevel !== null) fill(runStart, x - 1, runLevel);
          runStart = x;
          runLevel = l;
        }
      }
      if (runLevel !== null) fill(runStart, end, runLevel);
    });
    void w;
    drawCursor(p, sec);
    const counts = [0, 0, 0, 0, 0];
    let none = 0;
    for (const id of rows) {
      const s = strips.get(id), l = s ? s[idx(sec)] : -1;
      if (l >= 0) counts[l]++;
      else none++;
    }
    readout(p, sec, rows.length + " forwarders: " + counts.map((n, l) => "L" + l + " " + n).join(" · ") + (none ? " · no data " + none : ""));
  }

  function joins(p, sec) {
    if (!p) return;
    const c = p.canvas, g = setup(p, 120), w = bw(c), mid = c.height / 2;
    let peak = 1;
    for (let x = first(); x <= end; x++) {
      const q = at(seriesName, x);
      if (!q) continue;
      peak = Math.max(peak, q.admitted.reduce((a, b) => a + b, 0), q.refused.reduce((a, b) => a + b, 0));
    }
    const scale = (mid - 2) / peak;
    for (let x = first(); x <= end; x++) {
      const q = at(seriesName, x);
      if (!q) continue;
      const px = xOf(c, x);
      let up = mid, down = mid;
      for (let k = 0; k < 6; k++) {
        const a = q.admitted[k] * scale, r = q.refused[k] * scale;
        if (a) {
          g.fillStyle = classColors[k];
          g.fillRect(px, up - a, w, a);
          up -= a;
        }
        if (r) {
          g.fillStyle = refusedColors[k];
          g.fillRect(px, down, w, r);
          down += r;
        }
      }
    }
    g.fillStyle = "#999";
    g.fillRect(0, mid, c.width, 1);
    drawCursor(p, sec);
    const q = at(seriesName, sec);
    if (!q) return readout(p, sec, "no data");
    const parts = [];
    for (let k = 0; k < 6; k++) {
      if (q.admitted[k] || q.refused[k]) parts.push(classNames[k] + " " + q.admitted[k] + "/" + q.refused[k]);
    }
    readout(p, sec, "admitted/refused per second (peak " + peak + "/s): " + (parts.length ? parts.join(" · ") : "no joins"));
  }

  function success(p, sec) {
    if (!p) return;
    const c = p.canvas, g = setup(p, 90), w = bw(c);
    for (let k = 1; k < 6; k++) {
      g.strokeStyle = classColors[k];
      g.lineWidth = 1.5;
      g.beginPath();
      let open = false;
      for (let x = first(); x <= end; x++) {
        const q = at(seriesName, x), n = q ? q.admitted[k] + q.refused[k] : 0;
        if (!n) {
          open = false;
          continue;
        }
        const y = c.height - 2 - (q.admitted[k] / n) * (c.height - 4);
        if (open) g.lineTo(xOf(c, x) + w / 2, y);
        else g.moveTo(xOf(c, x) + w / 2, y);
        open = true;
      }
      g.stroke();
    }
    drawCursor(p, sec);
    const q = at(seriesName, sec), parts = [];
    for (let k = 0; k < 6 && q; k++) {
      const n = q.admitted[k] + q.refused[k];
      if (n) parts.push(classNames[k] + " " + Math.round((100 * q.admitted[k]) / n) + "%");
    }
    readout(p, sec, parts.length ? "joins admitted: " + parts.join(" · ") : "no joins in that second");
  }

  // line draws lines (value functions with colours; null: a gap) scaled
  // to the window's peak (at least min) and says text(point at sec).
  function line(p, sec, lines, min, text) {
    if (!p) return;
    const c = p.canvas, g = setup(p, 80), w = bw(c);
    let peak = min;
    for (let x = first(); x <= end; x++) {
      const q = at(seriesName, x);
      if (q) for (const l of lines) peak = Math.max(peak, l.v(q) || 0);
    }
    for (const l of lines) {
      g.strokeStyle = l.color;
      g.lineWidth = 1.5;
      g.beginPath();
      let open = false;
      for (let x = first(); x <= end; x++) {
        const q = at(seriesName, x), v = q ? l.v(q) : null;
        if (v === null || v === undefined) {
          open = false;
          continue;
        }
        const y = c.height - 2 - (v / peak) * (c.height - 6);
        if (open) g.lineTo(xOf(c, x) + w / 2, y);
        else g.moveTo(xOf(c, x) + w / 2, y);
        open = true;
      }
      g.stroke();
    }
    drawCursor(p, sec);
    readout(p, sec, text(at(seriesName, sec)) + " (scale " + (Math.round(peak * 100) / 100) + ")");
  }

  return { init, load, add, setView, redraw, levelColors };
})();
