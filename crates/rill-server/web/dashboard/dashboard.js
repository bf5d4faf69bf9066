// rill's live dashboard: uPlot charts fed by /dashboard/live (SSE snapshots every second) and
// /dashboard/history (the `rill bench` runs). Plain script, no build step.
(() => {
  "use strict";
  const key = new URLSearchParams(location.search).get("api_key");
  const withKey = (u) => (key ? `${u}${u.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(key)}` : u);
  const MAX = 300;
  const cols = {
    t: [], ttft50: [], ttft95: [], itl50: [], itl95: [], target: [], tps: [],
    running: [], waiting: [], limit: [], kv: [], rss: [], errors: {},
  };
  let lastErrors = null;
  // For tests and the console: counts (snapshots received, the one the tiles show, history
  // loads), the latest snapshot, the received columns, the charts.
  const state = { snapshots: 0, last: null, historyRuns: 0, historyLoads: 0, rendered: 0, cols, charts: {} };
  window.rillDashboard = state;

  const palette = ["#5ec4ff", "#ffb454", "#5fd38d", "#c792ea", "#ff6b6b", "#f07178"];
  const axis = { stroke: "#8b96a3", grid: { stroke: "#26303a" }, ticks: { stroke: "#26303a" } };
  const el = (id) => document.getElementById(id);
  const width = (node) => Math.max(280, node.clientWidth);

  function chart(id, series, extra = {}) {
    const node = el(id);
    const opts = {
      width: width(node), height: 200,
      series: [{}, ...series.map((s, i) => ({ stroke: s.color || palette[i], width: 2, spanGaps: true, ...s }))],
      axes: [{ ...axis }, { ...axis, size: 56 }],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      ...extra,
    };
    const u = new uPlot(opts, [[], ...series.map(() => [])], node);
    state.charts[id] = u;
    return u;
  }

  const cTtft = chart("c-ttft", [{ label: "p50" }, { label: "p95" }]);
  const cItl = chart("c-itl", [{ label: "p50" }, { label: "p95" }, { label: "target", color: "#ff6b6b", dash: [6, 4], width: 1 }]);
  const cTps = chart("c-tps", [{ label: "tokens/s", fill: "rgba(94,196,255,.12)" }]);
  const cBatch = chart("c-batch", [{ label: "running" }, { label: "waiting" }, { label: "limit", dash: [6, 4], width: 1 }]);
  const cMem = chart("c-mem", [{ label: "KV %", scale: "%" }, { label: "RSS MiB", scale: "mib" }], {
    axes: [{ ...axis }, { ...axis, scale: "%", size: 48 }, { ...axis, scale: "mib", side: 1, size: 60, grid: { show: false } }],
    scales: { "%": { range: [0, 100] } },
  });
  let cErr = null;
  let errCodes = [];

  function errorChart(codes) {
    el("c-err").innerHTML = "";
    errCodes = codes;
    cErr = chart("c-err", codes.map((c) => ({ label: c })));
  }

  function push(s) {
    const c = cols;
    c.t.push(s.t);
    c.ttft50.push(s.ttft_p50_ms); c.ttft95.push(s.ttft_p95_ms);
    c.itl50.push(s.itl_p50_ms); c.itl95.push(s.itl_p95_ms); c.target.push(s.target_itl_ms);
    c.tps.push(s.tokens_per_s);
    c.running.push(s.running); c.waiting.push(s.waiting); c.limit.push(s.batch_limit);
    c.kv.push(s.kv_total ? (100 * s.kv_used) / s.kv_total : 0); c.rss.push(s.rss_mib);
    const codes = Object.keys(s.errors || {}).sort();
    for (const code of codes) {
      if (!c.errors[code]) c.errors[code] = new Array(c.t.length - 1).fill(0);
      const prev = lastErrors && lastErrors[code] !== undefined ? lastErrors[code] : s.errors[code];
      c.errors[code].push(Math.max(0, s.errors[code] - prev));
    }
    lastErrors = s.errors || {};
    if (c.t.length > MAX) {
      for (const k of Object.keys(c)) {
        if (k === "errors") for (const e of Object.keys(c.errors)) c.errors[e].shift();
        else c[k].shift();
      }
    }
    state.snapshots += 1;
    state.last = s;
  }

  const fmt = (v, unit, digits = 0) => (v === null || v === undefined || Number.isNaN(v) ? "–" : `${v.toFixed(digits)}${unit}`);

  function render() {
    const c = cols;
    cTtft.setData([c.t, c.ttft50, c.ttft95]);
    cItl.setData([c.t, c.itl50, c.itl95, c.target]);
    cTps.setData([c.t, c.tps]);
    cBatch.setData([c.t, c.running, c.waiting, c.limit]);
    cMem.setData([c.t, c.kv, c.rss]);
    const codes = Object.keys(c.errors).sort();
    if (!cErr || codes.join() !== errCodes.join()) errorChart(codes);
    cErr.setData([c.t, ...codes.map((k) => c.errors[k])]);
    const s = state.last;
    if (!s) return;
    state.rendered = state.snapshots;
    el("v-tps").textContent = fmt(s.tokens_per_s, "", 1);
    el("v-ttft").textContent = fmt(s.ttft_p95_ms, " ms");
    el("v-itl").textContent = fmt(s.itl_p95_ms, " ms", 1);
    el("v-run").textContent = `${s.running} / ${s.batch_limit}`;
    el("v-wait").textContent = `${s.waiting}`;
    el("v-kv").textContent = s.kv_total ? `${((100 * s.kv_used) / s.kv_total).toFixed(1)} %` : "–";
    el("v-rss").textContent = fmt(s.rss_mib, " MiB");
  }

  let renderQueued = false;
  function schedule() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => { renderQueued = false; render(); });
  }

  function connect() {
    const status = el("status");
    const es = new EventSource(withKey("/dashboard/live"));
    es.addEventListener("history", (e) => {
      for (const s of JSON.parse(e.data)) push(s);
      status.textContent = "live"; status.className = "live";
      schedule();
    });
    es.addEventListener("snapshot", (e) => { push(JSON.parse(e.data)); schedule(); });
    es.onerror = () => { status.textContent = "disconnected — retrying"; status.className = "down"; };
  }

  async function history() {
    try {
      const r = await fetch(withKey("/dashboard/history"));
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const h = await r.json();
      el("hist-src").textContent = h.db || "";
      const runs = h.runs || [];
      state.historyRuns = runs.length;
      // Nothing stored yet: say how to fill the panel (rill bench against this server, into
      // the database it reads).
      el("hist-empty").hidden = runs.length > 0;
      const quote = (a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`);
      el("hist-cmd").textContent = `rill bench --url ${location.origin} -c 1,4,8${h.db ? ` --db ${quote(h.db)}` : ""}`;
      const levels = [...new Set(runs.flatMap((r) => r.levels.map((l) => l.concurrency)))].sort((a, b) => a - b);
      const xs = runs.map((_, i) => i);
      const at = (r, c, f) => { const l = r.levels.find((x) => x.concurrency === c); return l ? l[f] : null; };
      const flagged = runs.map((r) => r.regressions.length > 0);
      const mk = (id, field) => {
        el(id).innerHTML = "";
        const series = levels.map((c, i) => ({ label: `c=${c}`, color: palette[i % palette.length], points: { show: true, size: 6 } }));
        series.push({ label: "regression", color: "#ff6b6b", width: 0, paths: () => null, points: { show: true, size: 12, fill: "#ff6b6b" } });
        const u = chart(id, series, {
          scales: { x: { time: false } },
          axes: [{ ...axis, values: (_, ticks) => ticks.map((t) => (runs[t] ? `#${runs[t].id} ${runs[t].commit}` : "")) }, { ...axis, size: 56 }],
        });
        const data = levels.map((c) => runs.map((r) => at(r, c, field)));
        const worst = runs.map((r, i) => (flagged[i] ? Math.max(...levels.map((c) => at(r, c, field) || 0)) : null));
        u.setData([xs, ...data, worst]);
      };
      mk("c-htps", "output_tokens_per_s");
      mk("c-httft", "ttft_p95_ms");
      const list = el("regressions");
      list.innerHTML = "";
      for (const r of runs.filter((x) => x.regressions.length)) {
        for (const g of r.regressions) {
          const li = document.createElement("li");
          li.textContent = `run #${r.id} (${r.commit}) vs #${r.baseline}: ${g.metric} at c=${g.concurrency} ${g.change_pct > 0 ? "+" : ""}${g.change_pct.toFixed(1)}% (p=${g.p.toExponential(1)})`;
          list.appendChild(li);
        }
      }
    } catch (e) {
      el("hist-src").textContent = `unavailable: ${e.message}`;
    }
    state.historyLoads += 1;
  }

  window.addEventListener("resize", () => {
    for (const id of Object.keys(state.charts)) {
      const u = state.charts[id];
      u.setSize({ width: width(el(id)), height: 200 });
    }
  });
  connect();
  history();
  setInterval(history, 30000);
})();
