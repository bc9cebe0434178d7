// callrelay dashboard: renders the snapshots /events pushes. No framework,
// no third-party code; every value goes in through textContent.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  // el builds an element: el("td", {class: "num"}, "12", child, ...).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  const fmt = (n) => (n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US"));
  const pct = (permille) => (permille / 10).toFixed(permille >= 100 ? 0 : 1) + "%";
  // rate shows a rate with one decimal below 100.
  const rate = (x) => (x >= 100 ? fmt(Math.round(x)) : x.toFixed(1));

  function count(n, cls) {
    return el("td", { class: n > 0 ? cls || "" : "zero" }, fmt(n));
  }

  // ---- forwarders -------------------------------------------------------

  function loadCell(f) {
    const load = Math.max(0, f.load);
    const fill = el("div", { class: "fill" + (load >= 1000 ? " over" : load >= 800 ? " hot" : "") });
    fill.style.width = Math.min(100, load / 10) + "%";
    const bar = el("div", { class: "loadbar", title: pct(load) + " of capacity" }, fill);
    const label = el("div", { class: "loadlabel" }, pct(load) + (f.worst ? " " + f.worst.replace("_", " ") : ""));
    const td = el("td", { class: "load" }, bar, label);
    if (f.signals && f.signals.length) {
      td.append(el("div", { class: "signals" }, f.signals.map((s) => s.name.replace("_", " ") + " " + pct(s.permille)).join(" · ")));
    }
    return td;
  }

  function classesTable(classes) {
    if (!classes || !classes.length) return el("span", { class: "empty" }, "no load report");
    const t = el("table", { class: "classes" });
    t.append(el("tr", {}, el("th", {}, ""), el("th", {}, "adm 1m"), el("th", {}, "ref 1m"), el("th", {}, "adm 5m"), el("th", {}, "ref 5m")));
    for (const c of classes) {
      if (c.class === 0 && c.admitted5m === 0 && c.refused5m === 0) continue;
      t.append(el("tr", { "data-class": c.class },
        el("th", {}, c.name),
        count(c.admitted1m), count(c.refused1m, "refused"),
        count(c.admitted5m), count(c.refused5m, "refused")));
    }
    if (t.rows.length === 1) return el("span", { class: "empty" }, "no joins in the last 5 minutes");
    return t;
  }

  // adaptCell shows the NACK, retransmission and probe rates of the last
  // minute (AdaptView).
  function adaptCell(f) {
    const td = el("td", { class: "adapt" });
    const a = f.adapt;
    if (!a) {
      td.append(el("span", { class: "empty" }, f.hasReport ? "not reported (a forwarder older than the adaptation counters)" : "no load report"));
      return td;
    }
    const t = a.total;
    td.title = "since the forwarder started: " + fmt(t.nacked) + " NACKed, " + fmt(t.resent) + " resent (" + fmt(Math.round(t.resentBytes / 1000)) + " kB), " +
      fmt(t.notCached) + " not cached, " + fmt(t.overBudget) + " over budget, " + fmt(t.probes) + " probes, " +
      fmt(t.keyFramesAsked) + " key frames asked, " + fmt(t.subscriptions) + " subscriptions";
    if (!(a.windowSecs > 0)) {
      td.append(el("span", { class: "empty" }, "measuring… (one report so far)"));
      return td;
    }
    const share = a.nackedPerSec > 0 ? " (" + Math.round((100 * a.resentPerSec) / a.nackedPerSec) + "%)" : "";
    td.append(el("div", { class: "nacks" }, "NACKs: " + rate(a.resentPerSec) + "/s resent of " + rate(a.nackedPerSec) + "/s" + share));
    const unanswered = [];
    if (a.notCachedPerSec > 0) unanswered.push("not cached " + rate(a.notCachedPerSec) + "/s");
    if (a.overBudgetPerSec > 0) unanswered.push("over budget " + rate(a.overBudgetPerSec) + "/s");
    if (a.boundedPerSec > 0) unanswered.push("asked too often " + rate(a.boundedPerSec) + "/s");
    if (unanswered.length) td.append(el("div", { class: "unanswered" }, unanswered.join(" · ")));
    td.append(el("div", { class: "retx" }, "retransmitted " + rate(a.resentKBPerSec) + " kB/s · probes " + rate(a.probesPerMin) + "/min"));
    td.append(el("div", { class: "hint" }, "key frames asked " + rate(a.keyFramesPerMin) + "/min · subscriptions " + rate(a.subscriptionsPerMin) + "/min" +
      (a.windowSecs < 59.5 ? " · over the last " + Math.round(a.windowSecs) + " s" : "")));
    return td;
  }

  function forwarderRow(f) {
    const status = el("td", { class: "status" });
    status.append(el("span", { class: "pill " + (f.up ? "up" : "down") }, f.up ? "up" : "DOWN"));
    if (!f.up) status.append(el("div", { class: "hint" }, "silent for " + Math.round(f.silentSecs) + " s"));
    if (f.draining) status.append(el("span", { class: "pill draining", title: "admits nobody new; moving its devices away" }, "draining"));
    if (f.stateDegraded) status.append(el("span", { class: "pill degraded", title: "cannot reach Redis; call-state changes are queued" }, "Redis unreachable, " + fmt(f.stateQueued) + " queued"));
    if (f.media) status.append(el("div", { class: "hint mono" }, f.media));
    if (f.media6) status.append(el("div", { class: "hint mono" }, f.media6));
    for (const s of f.streams || []) status.append(el("div", { class: "hint mono" }, s));

    const level = el("td", { class: "level-cell" },
      el("span", { class: "level", "data-level": f.level, title: f.levelMeaning }, f.level >= 0 ? "L" + f.level : "?"),
      el("span", { class: "level-text" }, f.levelText));
    if (f.shedVideo || f.audioMuted) {
      level.append(el("div", { class: "hint" }, "video shed " + fmt(f.shedVideo) + " pkts · silent audio held back " + fmt(f.audioMuted) + " pkts"));
    }
    return el("tr", { "data-forwarder": f.id, "data-up": f.up, class: f.up ? "" : "down" },
      el("td", { class: "fid" }, f.id, f.region ? el("div", { class: "hint" }, f.region) : null),
      status, level, loadCell(f),
      el("td", { class: "num sessions" }, fmt(f.sessions)),
      el("td", { class: "num calls" }, f.hasReport ? fmt(f.callsOneToOne) + " / " + fmt(f.callsGroup) : fmt(f.calls) + " (all)"),
      el("td", { class: "admissions" }, classesTable(f.classes)),
      adaptCell(f));
  }

  // ---- partitions -------------------------------------------------------

  const palette = ["#2e86de", "#8e44ad", "#16a085", "#2c3e50", "#d35400", "#7f8c8d", "#27ae60", "#c0392b", "#f39c12", "#1abc9c"];

  function renderPartitions(p) {
    const owners = $("partition-owners"), grid = $("partitions"), summary = $("partitions-summary");
    owners.replaceChildren();
    grid.replaceChildren();
    if (!p.checked) {
      summary.textContent = p.error || "not checked yet (needs Redis)";
      return;
    }
    if (p.error) {
      summary.textContent = p.error;
      summary.className = "hint error";
      return;
    }
    summary.className = "hint";
    const unowned = p.unowned.length;
    summary.textContent = p.total + " partitions, " + (p.total - unowned) + " owned, " + unowned + " unowned · checked " + new Date(p.checkedAt).toLocaleTimeString();
    p.owners.forEach((o, i) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = palette[i % palette.length];
      owners.append(el("span", { class: "owner", "data-owner": o.owner, title: o.owner },
        swatch,
        o.conductor + " — " + o.partitions + " partition(s), epoch " + (o.minEpoch === o.maxEpoch ? o.minEpoch : o.minEpoch + "…" + o.maxEpoch)));
    });
    if (unowned) owners.append(el("span", { class: "owner refused" }, unowned + " unowned: calls there get no speaker decisions"));
    if (p.total > 2048) return;
    p.owner.forEach((o, n) => {
      const cell = el("div", { class: "part" + (o < 0 ? " unowned" : ""), "data-partition": n,
        title: "partition " + n + ": " + (o < 0 ? "UNOWNED" : p.owners[o].owner) }, n);
      if (o >= 0) cell.style.background = palette[o % palette.length];
      grid.append(cell);
    });
  }

  // ---- health -----------------------------------------------------------

  function renderProbe(row, probe, what) {
    const state = row.querySelector(".state"), detail = row.querySelector(".detail");
    if (!probe.configured) {
      state.textContent = "not configured";
      state.className = "state";
      detail.textContent = what === "Redis" ? "start with --redis-url for partitions and the drill-down" : "";
      return;
    }
    if (!probe.checked) {
      state.textContent = "checking…";
      state.className = "state";
      detail.textContent = "";
      return;
    }
    state.textContent = probe.ok ? "ok" : "ERROR";
    state.className = "state " + (probe.ok ? "ok" : "bad");
    detail.textContent = probe.ok ? probe.latencyMs.toFixed(2) + " ms round trip" : probe.error;
  }

  // ---- the fleet: cells, regions, filters --------------------------------

  const cells = new Map(); // id -> Cell (fleet.go)
  let regionViews = [];
  let spillList = []; // from→to spill-over pairs of the last 5 minutes (FleetMsg.spills)
  const selected = new Set(); // forwarders whose rows are shown
  const smallFleet = 12; // up to this many, every row is shown
  const charts = window.CallrelayCharts;

  // worse orders cells worst first: down, then level, then load, then id.
  function worse(a, b) {
    if (a.u !== b.u) return a.u ? 1 : -1;
    if (a.l !== b.l) return b.l - a.l;
    if (a.p !== b.p) return b.p - a.p;
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  }

  function filtered() {
    const region = $("f-region").value, show = $("f-level").value, q = $("f-id").value.trim();
    const out = [];
    for (const c of cells.values()) {
      if (region && (c.r || "") !== region) continue;
      if (q && !c.id.includes(q)) continue;
      if (show === "down" && c.u) continue;
      if (show === "throttling" && !(c.u && c.l >= 1)) continue;
      if (/^[0-9]$/.test(show) && !(c.u && c.l >= Number(show))) continue;
      out.push(c);
    }
    return out.sort(worse);
  }

  function cellTitle(c) {
    return c.id + (c.r ? " (" + c.r + ")" : "") + ": " + (c.u ? (c.l >= 0 ? "level " + c.l : "no load report") + ", load " + c.p + "%" +
      (c.w ? " (" + c.w.replace("_", " ") + ")" : "") : "DOWN") + (c.d ? ", draining" : "") + (c.s ? ", Redis unreachable" : "");
  }

  function renderFleet() {
    const shown = filtered();
    $("grid").replaceChildren(...shown.map((c) => el("div", {
      class: "cell" + (c.p >= 80 ? " hot" : "") + (selected.has(c.id) ? " selected" : ""),
      "data-id": c.id, "data-level": c.l, "data-up": c.u, "data-region": c.r || "", title: cellTitle(c),
    })));
    $("no-forwarders").hidden = cells.size > 0;
    $("fleet-count").textContent = shown.length + " of " + cells.size + " forwarder(s) shown";
    const region = $("f-region").value;
    $("history-scope").textContent = region ? "region " + region : "whole fleet";
    charts.setView(region || "*", shown.map((c) => c.id), Number($("f-span").value));
  }

  function renderRegions() {
    const sel = $("f-region"), current = sel.value;
    const names = regionViews.map((r) => r.region);
    const have = Array.from(sel.options).slice(1).map((o) => o.value);
    if (names.join("\n") !== have.join("\n")) {
      sel.replaceChildren(el("option", { value: "" }, "all regions"), ...names.map((n) => el("option", { value: n }, n || "(no region)")));
      sel.value = names.includes(current) ? current : "";
    }
    $("regions").replaceChildren(...regionViews.map((r) => {
      const bar = el("div", { class: "levels", title: r.levels.map((n, l) => "level " + l + ": " + n).join(", ") });
      r.levels.forEach((n, l) => {
        if (!n) return;
        const seg = el("span");
        seg.style.width = (100 * n) / Math.max(1, r.up) + "%";
        seg.style.background = charts.levelColors[l];
        bar.append(seg);
      });
      const card = el("div", { class: "region" + (sel.value === r.region ? " selected" : ""), "data-region": r.region, "data-max-level": r.maxLevel },
        el("div", { class: "name" }, r.region || "(no region)"),
        el("div", { class: "summary" }, r.up + " / " + r.forwarders + " up · " + r.throttling + " throttling" +
          (r.draining ? " · " + r.draining + " draining" : "") + (r.degraded ? " · " + r.degraded + " without Redis" : "")),
        bar,
        el("div", { class: "worst" }, r.loadMax >= 0 ? "worst load " + pct(r.loadMax) + " " + r.worst.replace("_", " ") + " on " + r.worstId : "no load"),
        el("div", { class: "joins" }, fmt(r.sessions) + " sessions · joins 1 min: " + fmt(r.admitted1m) + " admitted, ",
          el("span", { class: r.refused1m ? "refused" : "" }, fmt(r.refused1m) + " refused")),
        spillLine(r));
      card.addEventListener("click", () => {
        sel.value = sel.value === r.region ? "" : r.region;
        renderRegions();
        renderFleet();
      });
      return card;
    }));
  }

  // spillLine says on a region card where its refused joins went in the
  // last minute (spilled out, by target region), how many other regions
  // sent it (referred in) and how many found no region in reach.
  function spillLine(r) {
    const out = r.spillOut1m || 0, inn = r.spillIn1m || 0, stuck = r.spillRefused1m || 0;
    if (!out && !inn && !stuck) return null;
    const to = spillList.filter((p) => p.from === (r.region || "(none)") && p.joins1m > 0)
      .map((p) => p.to + " " + fmt(p.joins1m)).join(", ");
    const parts = [];
    if (out) parts.push(el("span", { class: "spill-out" }, "spilled out " + fmt(out) + (to ? " (→ " + to + ")" : "")));
    if (inn) parts.push(el("span", { class: "spill-in" }, "referred in " + fmt(inn)));
    if (stuck) parts.push(el("span", { class: "refused" }, fmt(stuck) + " with no region in reach"));
    const line = el("div", { class: "spill", title: "regional spill-over, joins in the last minute" }, "spill 1 min: ");
    parts.forEach((p, i) => line.append(...(i ? [" · ", p] : [p])));
    return line;
  }

  // renderSpills draws the from→to list: the region pairs with joins spilled
  // in the last five minutes, the last minute first.
  function renderSpills(pairs) {
    spillList = pairs;
    const table = $("spills");
    table.hidden = pairs.length === 0;
    table.tBodies[0].replaceChildren(...pairs.map((p) => el("tr", { "data-from": p.from, "data-to": p.to },
      el("th", {}, p.from + " → " + p.to), count(p.joins1m), count(p.joins5m))));
  }

  // ---- trunk RTT matrix ---------------------------------------------------

  // renderTrunks draws the region-to-region matrix: a row per measuring
  // region, a column per peer region, each cell the median RTT over the
  // row region's forwarders with the worst (and who measured it) after it.
  function renderTrunks(pairs) {
    const table = $("trunks");
    table.hidden = pairs.length === 0;
    const froms = [...new Set(pairs.map((p) => p.from))].sort();
    const tos = [...new Set(pairs.map((p) => p.to))].sort();
    const by = new Map(pairs.map((p) => [p.from + "\n" + p.to, p]));
    const ms = (us) => (us / 1000).toFixed(1) + " ms";
    table.tHead.rows[0].replaceChildren(el("th", {}, "from \\ to"), ...tos.map((t) => el("th", {}, t)));
    table.tBodies[0].replaceChildren(...froms.map((f) => el("tr", { "data-from": f }, el("th", {}, f),
      ...tos.map((t) => {
        const p = by.get(f + "\n" + t);
        if (!p) return el("td", { class: "num" }, "–");
        return el("td", { class: "num", "data-to": t, title: p.n + " forwarder(s) report it; worst on " + p.maxId },
          ms(p.med) + " ", el("span", { class: "hint" }, "(" + ms(p.max) + ")"));
      }))));
  }

  // ---- drill-down rows ----------------------------------------------------

  let rowsBusy = false;

  function rowIDs() {
    if (selected.size) return Array.from(selected).filter((id) => cells.has(id)).sort();
    if (cells.size <= smallFleet) return Array.from(cells.keys()).sort();
    return [];
  }

  async function renderRows() {
    const ids = rowIDs();
    $("rows-hint").textContent = ids.length ? (selected.size ? "click a cell again to close its row" : "") :
      "click a cell in the grid above to see that forwarder's row here";
    const tbody = $("forwarders").tBodies[0];
    if (!ids.length) {
      tbody.replaceChildren();
      return;
    }
    if (rowsBusy) return;
    rowsBusy = true;
    try {
      const r = await fetch("api/forwarders?" + ids.map((id) => "id=" + encodeURIComponent(id)).join("&"));
      const rows = await r.json();
      if (!r.ok) throw new Error(rows.error);
      tbody.replaceChildren(...rows.map(forwarderRow));
    } catch (err) {
      tbody.replaceChildren(el("tr", {}, el("td", { class: "error", colspan: 8 }, "cannot read the rows: " + err.message)));
    } finally {
      rowsBusy = false;
    }
  }

  $("grid").addEventListener("click", (ev) => {
    const id = ev.target.dataset && ev.target.dataset.id;
    if (!id) return;
    if (selected.has(id)) selected.delete(id);
    else selected.add(id);
    renderFleet();
    renderRows();
  });
  for (const id of ["f-region", "f-level", "f-span"]) $(id).addEventListener("change", () => { renderRegions(); renderFleet(); });
  $("f-id").addEventListener("input", renderFleet);

  // ---- one message of the stream ------------------------------------------

  let lastSnapshot = 0;

  function render(m) {
    lastSnapshot = Date.now();
    document.body.classList.remove("stale");
    if (m.full) cells.clear();
    for (const c of m.cells) cells.set(c.id, c);
    for (const id of m.gone || []) cells.delete(id);
    if (m.verdict) {
      const v = $("verdict");
      v.dataset.status = m.verdict.status;
      v.textContent = m.verdict.text;
      document.title = m.verdict.status + " — callrelay";
      $("issues").replaceChildren(...(m.verdict.issues || []).map((i) => el("li", {}, i)));
    }
    regionViews = m.regions;
    if (m.spills) renderSpills(m.spills);
    renderRegions();
    renderFleet();
    charts.add(m.point, cells);
    renderRows();

    $("calls-1to1").textContent = fmt(m.cluster.callsOneToOne);
    $("calls-group").textContent = fmt(m.cluster.callsGroup);
    $("sessions").textContent = fmt(m.cluster.sessions);
    $("fwd-up").textContent = m.cluster.up + " / " + m.cluster.known;
    $("cluster-classes").tBodies[0].replaceChildren(...m.cluster.classes.map((c) =>
      el("tr", { "data-class": c.class }, el("th", {}, c.name),
        count(c.admitted1m), count(c.refused1m, "refused"), count(c.admitted5m), count(c.refused5m, "refused"))));

    renderProbe($("health-nats"), m.health.nats, "NATS");
    renderProbe($("health-redis"), m.health.redis, "Redis");
    const d = m.dropped, dropped = d.forged + d.malformed + d.unexpected + d.stale + d.overflow;
    const dr = $("health-dropped");
    dr.querySelector(".state").textContent = fmt(dropped);
    dr.querySelector(".state").className = "state" + (d.forged > 0 ? " bad" : "");
    dr.querySelector(".detail").textContent = "forged " + fmt(d.forged) + " · malformed " + fmt(d.malformed) +
      " · other types " + fmt(d.unexpected) + " · stale " + fmt(d.stale) + (d.overflow ? " · over the forwarder limit " + fmt(d.overflow) : "");

    if (m.partitions) renderPartitions(m.partitions);
    if (m.trunks) renderTrunks(m.trunks);
  }

  // ---- live connection --------------------------------------------------

  let historyLoaded = false;

  async function loadHistory() {
    try {
      const r = await fetch("api/history");
      const h = await r.json();
      if (!r.ok) throw new Error(h.error);
      charts.load(h);
      historyLoaded = true;
    } catch (err) {
      $("cursor-time").textContent = "cannot read the history: " + err.message;
    }
  }

  function connect() {
    const conn = $("conn");
    const es = new EventSource("events");
    const take = (ev) => {
      try {
        render(JSON.parse(ev.data));
        conn.dataset.state = "live";
        conn.textContent = "live · updated " + new Date().toLocaleTimeString();
      } catch (err) {
        conn.dataset.state = "lost";
        conn.textContent = "cannot read an update: " + err.message;
        return;
      }
      if (!historyLoaded && ev.type === "fleet") loadHistory();
    };
    es.addEventListener("fleet", take);
    es.addEventListener("delta", take);
    es.onerror = () => {
      conn.dataset.state = "lost";
      conn.textContent = "lost the connection to the dashboard; retrying… (the page below is stale)";
      document.body.classList.add("stale");
    };
  }

  // A message older than 5 s means the stream stalled: say so.
  setInterval(() => {
    if (lastSnapshot && Date.now() - lastSnapshot > 5000) {
      document.body.classList.add("stale");
      $("conn").dataset.state = "lost";
      $("conn").textContent = "no update for " + Math.round((Date.now() - lastSnapshot) / 1000) + " s; the page below is stale";
    }
  }, 1000);

  charts.init();

  // ---- call drill-down --------------------------------------------------

  function renderCall(c) {
    const out = [];
    out.push(el("p", { class: "call-summary" },
      el("span", { class: "mono" }, c.id), " — " + c.class + " call, " + c.members.length + " of " + c.maxSize + " members, state version " + c.version +
      ", partition " + c.partition + " (" + (c.conductor ? "conductor " + c.conductor : "no conductor owns it") + ")"));
    const sp = c.speaker;
    out.push(el("p", { class: "speaker", id: "call-speaker" },
      "dominant speaker: ", el("span", { class: "mono" }, sp.dominant || "none"),
      sp.known ? " (conductor checkpoint epoch " + sp.epoch + ", decision " + sp.seq + (sp.since ? ", since " + new Date(sp.since).toLocaleTimeString() : "") + ")" : "",
      sp.note ? " — " + sp.note : ""));
    const t = el("table", { class: "grid small", id: "call-members" },
      el("thead", {}, el("tr", {}, el("th", {}, "participant"), el("th", {}, "forwarder"), el("th", {}, "device address"),
        el("th", {}, "joined"), el("th", {}, "streams"), el("th", {}, "last spoke"))));
    const tb = el("tbody");
    for (const m of c.members) {
      tb.append(el("tr", { "data-participant": m.participant, class: m.dominant ? "dominant" : "" },
        el("td", { class: "mono" }, m.participant, m.dominant ? el("span", { class: "pill up" }, "dominant") : null),
        el("td", {}, el("span", { class: "fid" }, m.forwarder), " ", el("span", { class: "pill " + (m.forwarderUp ? "up" : "down") }, m.forwarderUp ? "up" : "down")),
        m.addr ? el("td", { class: "mono" }, m.addr) : el("td", { class: "hint" }, c.addrsHidden ? "hidden (admin token only)" : "–"),
        el("td", {}, new Date(m.joinedAt).toLocaleTimeString()),
        el("td", { class: "num" }, m.streams),
        el("td", {}, m.lastSpoke ? new Date(m.lastSpoke).toLocaleTimeString() : "–")));
    }
    t.append(tb);
    out.push(t);
    out.push(...videoSection(c.video));
    out.push(...timelineSection(c.timeline || []));
    $("call-result").replaceChildren(...out);
  }

  // timelineSection lists the conductor's decisions on the call from its
  // reports: speaker switches, layer switches and cuts, newest first.
  function timelineSection(evs) {
    const out = [el("h3", {}, "Conductor decisions")];
    if (!evs.length) {
      out.push(el("p", { class: "hint", id: "call-timeline-note" }, "none reported for this call in the last " + 64 + " decisions kept"));
      return out;
    }
    const tb = el("tbody");
    for (const e of evs.slice().reverse()) {
      tb.append(el("tr", { "data-kind": e.kind },
        el("td", {}, new Date(e.at_unix_ms).toLocaleTimeString()), el("td", {}, e.kind),
        el("td", { class: "mono" }, e.participant || "–"), el("td", {}, e.detail || ""), el("td", { class: "fid" }, e.conductor || "")));
    }
    out.push(el("table", { class: "grid small", id: "call-timeline" },
      el("thead", {}, el("tr", {}, el("th", {}, "at"), el("th", {}, "what"), el("th", {}, "participant"), el("th", {}, "detail"), el("th", {}, "conductor"))), tb));
    return out;
  }

  // videoSection shows the conductor's latest decision on the call's video
  // (VideoView): each sender's plan, and who gets whose video at which layer.
  function videoSection(v) {
    const out = [el("h3", {}, "Video layers")];
    if (!v) return out;
    const ignored = v.forged + v.malformed > 0 ? " (ignored " + fmt(v.forged) + " forged, " + fmt(v.malformed) + " malformed decision(s))" : "";
    if (!v.seen) {
      out.push(el("p", { class: v.busy ? "hint error" : "hint", id: "call-video-note" }, v.note + (v.forged ? "" : ignored)));
      return out;
    }
    const from = "conductor " + v.conductor + ", epoch " + v.epoch + ", decision " + v.seq + (v.at ? " at " + new Date(v.at).toLocaleTimeString() : "");
    if (!v.video) {
      out.push(el("p", { id: "call-video-note" }, el("strong", {}, "no video"), " — " + v.note + " (" + from + ")" + ignored));
      return out;
    }
    out.push(el("p", { class: "hint", id: "call-video-note" }, "from " + from + (v.note ? " — " + v.note : "") + ignored));
    const kbps = (x) => (x > 0 ? fmt(Math.round(x)) : "off");
    const st = el("table", { class: "grid small", id: "call-senders" },
      el("thead", {}, el("tr", {}, el("th", {}, "sender"), el("th", {}, "plan"), el("th", { class: "num" }, "target kbit/s"),
        el("th", {}, "per layer kbit/s, lowest first"))));
    const sb = el("tbody");
    for (const s of v.senders) {
      sb.append(el("tr", { "data-sender": s.participant },
        el("td", { class: "mono" }, s.participant),
        el("td", {}, s.layers === 1 ? "one stream" : s.layers + " layers (simulcast)"),
        el("td", { class: "num" }, kbps(s.targetKbps)),
        el("td", {}, (s.layerKbps || []).map(kbps).join(" / "))));
    }
    st.append(sb);
    if (v.senders.length) out.push(st);
    else out.push(el("p", { class: "hint" }, "no sender plans in the decision"));
    const lt = el("table", { class: "grid small", id: "call-layers" },
      el("thead", {}, el("tr", {}, el("th", {}, "receiver"), el("th", {}, "gets sender"), el("th", {}, "layer"), el("th", { class: "num" }, "rank"))));
    const lb = el("tbody");
    for (const l of v.layers) {
      lb.append(el("tr", { "data-receiver": l.receiver, "data-sender": l.sender, "data-rank": l.rank },
        el("td", { class: "mono" }, l.receiver),
        el("td", { class: "mono" }, l.sender),
        el("td", { class: l.rank === 255 ? "zero" : "" }, l.layer),
        el("td", { class: "num" }, l.rank === 255 ? "none" : l.rank)));
    }
    lt.append(lb);
    if (v.layers.length) out.push(lt, el("p", { class: "hint" }, "pairs not listed are left to the forwarders' own policy"));
    else out.push(el("p", { class: "hint" }, "no layer assignments: the forwarders' own policy decides"));
    return out;
  }

  async function lookUp(ev) {
    ev.preventDefault();
    const id = $("call-id").value.trim();
    const res = $("call-result");
    res.replaceChildren(el("p", { class: "hint" }, "looking up… (listening up to a second and a half for the conductor's decision)"));
    try {
      const r = await fetch("api/call?id=" + encodeURIComponent(id));
      const body = await r.json();
      if (!r.ok) {
        res.replaceChildren(el("p", { class: "error", id: "call-error" }, r.status + ": " + body.error));
        return;
      }
      renderCall(body);
    } catch (err) {
      res.replaceChildren(el("p", { class: "error", id: "call-error" }, "lookup failed: " + err.message));
    }
  }

  $("call-form").addEventListener("submit", lookUp);
  connect();
})();
