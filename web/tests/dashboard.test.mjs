// The dashboard in headless Chromium against a real `rill serve` with the real model: the page
// loads, its charts receive live data while requests run, the benchmark history (two stored
// `rill bench` runs) is plotted, no script errors; a screenshot goes to
// target/screenshots/dashboard.png.
// Usage: node web/tests/dashboard.test.mjs PATH_TO_RILL_BINARY
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const rill = path.resolve(process.argv[2] || path.join(root, "target/debug/rill"));
const shots = path.join(root, "target/screenshots");
mkdirSync(shots, { recursive: true });
const tmp = mkdtempSync(path.join(os.tmpdir(), "rill-dash-"));
const db = path.join(tmp, "bench.sqlite");

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

function fail(msg) { console.error(`FAIL: ${msg}`); process.exitCode = 1; throw new Error(msg); }

async function waitReady(base, proc) {
  const t0 = Date.now();
  while (Date.now() - t0 < 300000) {
    if (proc.exitCode !== null) fail(`rill serve exited with ${proc.exitCode}`);
    try { const r = await fetch(`${base}/ready`); if (r.ok) return; } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 300));
  }
  fail("rill serve did not become ready");
}

async function load(base, n) {
  const one = async (i) => {
    const r = await fetch(`${base}/v1/chat/completions`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: `Tell me about harbour number ${i}.` }], max_tokens: 48, stream: true, ignore_eos: true }),
    });
    await r.text();
  };
  await Promise.all(Array.from({ length: n }, (_, i) => one(i)));
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = spawn(rill, ["serve", "--port", String(port), "-t", "2", "--bench-db", db], { stdio: "inherit" });
let browser;
try {
  await waitReady(base, server);
  for (let i = 0; i < 2; i++) {
    execFileSync(rill, ["bench", "--url", base, "-c", "1,2", "-n", "4", "--max-tokens", "16", "--prompts", "short", "--db", db, "--json"], { stdio: ["ignore", "ignore", "inherit"] });
  }
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(`${base}/dashboard`);
  const loading = load(base, 6);
  await page.waitForFunction(() => window.rillDashboard && window.rillDashboard.historyRuns >= 2, null, { timeout: 30000 });
  await loading;
  await page.waitForFunction(() => {
    const d = window.rillDashboard;
    const tps = d.charts["c-tps"];
    return d.snapshots >= 4 && tps && tps.data[0].length >= 4 && tps.data[1].some((v) => v > 0);
  }, null, { timeout: 60000 });
  const seen = await page.evaluate(() => {
    const d = window.rillDashboard;
    return {
      snapshots: d.snapshots,
      historyRuns: d.historyRuns,
      ttftPoints: d.charts["c-ttft"].data[2].filter((v) => v !== null).length,
      itlPoints: d.charts["c-itl"].data[2].filter((v) => v !== null).length,
      historySeries: d.charts["c-htps"].data.length,
      status: document.getElementById("status").textContent,
    };
  });
  console.log(JSON.stringify(seen));
  if (seen.ttftPoints < 1 || seen.itlPoints < 1) fail("latency charts received no data");
  if (seen.historySeries < 3) fail("history chart has no series");
  if (seen.status !== "live") fail(`status is ${seen.status}`);
  if (errors.length) fail(`script errors: ${errors.join("; ")}`);
  await page.screenshot({ path: path.join(shots, "dashboard.png"), fullPage: true });
  console.log(`dashboard: ok, screenshot at ${path.join(shots, "dashboard.png")}`);
} finally {
  if (browser) await browser.close();
  server.kill("SIGTERM");
}
