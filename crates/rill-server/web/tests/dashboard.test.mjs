// The dashboard in a headless browser (chromium or firefox) against a real `rill serve` with the
// real model: with no stored runs the history panel says how to fill it; the benchmark history
// (two stored `rill bench` runs) is plotted; while 4 streams generate, every 1 s snapshot and the
// headline read a non-zero tokens/s; the latency charts receive live data; no script errors.
// Screenshots go to target/screenshots/dashboard-BROWSER.png (and -empty.png, before any run).
// Usage: node crates/rill-server/web/tests/dashboard.test.mjs PATH_TO_RILL_BINARY [chromium|firefox]
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { browserName, check, launch, newPage, rill, shots, sleep, startServer, textOf } from "./harness.mjs";

const tmp = mkdtempSync(path.join(os.tmpdir(), "rill-dash-"));
const db = path.join(tmp, "bench.sqlite");

/** `n` chat streams of up to `maxTokens` tokens, read to the end (or until `stop()`). */
function streams(base, n, maxTokens) {
  const ctrl = new AbortController();
  const started = [];
  let ended = 0;
  const one = async (i) => {
    let first;
    started.push(new Promise((r) => { first = r; }));
    try {
      const r = await fetch(`${base}/v1/chat/completions`, {
        method: "POST", headers: { "content-type": "application/json" }, signal: ctrl.signal,
        body: JSON.stringify({ messages: [{ role: "user", content: `Tell me about harbour number ${i}.` }], max_tokens: maxTokens, stream: true, ignore_eos: true }),
      });
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (dec.decode(value).includes('"content"')) first();
      }
    } catch (e) {
      if (e.name !== "AbortError") throw e;
    } finally {
      first();
      ended += 1;
    }
  };
  const all = Promise.all(Array.from({ length: n }, (_, i) => one(i)));
  return {
    allStarted: () => Promise.all(started),
    get ended() { return ended; },
    done: all,
    stop: () => { ctrl.abort(); return all; },
  };
}

const { base, proc: server } = await startServer(["--bench-db", db]);
let browser;
try {
  browser = await launch();
  const page = await newPage(browser, 1400, 1100);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

  // 1. No runs stored: the history panel says how to fill it.
  await page.goto(`${base}/dashboard`);
  await page.waitForFunction(() => window.rillDashboard && window.rillDashboard.historyLoads >= 1, { timeout: 30000 });
  const hint = await page.evaluate(() => {
    const e = document.getElementById("hist-empty");
    return { hidden: e.hidden, shown: e.offsetParent !== null, text: e.textContent };
  });
  check(!hint.hidden && hint.shown && hint.text.includes(`rill bench --url ${base}`) && hint.text.includes(`--db ${db}`),
    `with no runs the history panel shows how to fill it (${JSON.stringify(hint.text.replace(/\s+/g, " "))})`);
  await page.screenshot({ path: path.join(shots, `dashboard-${browserName}-empty.png`), fullPage: true });

  // 2. Two stored runs are plotted, and the hint is gone.
  for (let i = 0; i < 2; i++) {
    execFileSync(rill, ["bench", "--url", base, "-c", "1,2", "-n", "4", "--max-tokens", "16", "--prompts", "short", "--db", db, "--json"], { stdio: ["ignore", "ignore", "inherit"] });
  }
  await page.reload();
  await page.waitForFunction(() => window.rillDashboard && window.rillDashboard.historyRuns >= 2, { timeout: 30000 });
  check(await page.evaluate(() => document.getElementById("hist-empty").hidden), "with runs stored the hint is hidden");

  // 3. While 4 streams generate, every 1 s snapshot and the headline show non-zero tokens/s.
  const gen = streams(base, 4, 2000);
  await gen.allStarted();
  check(gen.ended === 0, "4 streams are generating");
  // Snapshots carry the server's clock (`t`, the end of the second each covers; this host's
  // clock too): only those stamped a second or more after every stream produced text count.
  // (Counting by arrival instead took, under CI load, a snapshot from before the streams that
  // was still on its way to the busy browser.)
  const after = Date.now() / 1000 + 1;
  const samples = 6;
  const headline = [];
  const covered = () => page.evaluate((after) => window.rillDashboard.cols.t.filter((t) => t >= after).length, after);
  while ((await covered()) < samples) {
    const shown = await page.evaluate((after) => {
      const d = window.rillDashboard;
      return d.rendered === d.snapshots && d.last !== null && d.last.t >= after;
    }, after);
    if (shown) headline.push(await textOf(page, "#v-tps"));
    await sleep(200);
  }
  const stillRunning = gen.ended === 0;
  const live = await page.evaluate((after, samples) => {
    const d = window.rillDashboard;
    const i = d.cols.t.findIndex((t) => t >= after);
    return d.cols.tps.slice(i, i + samples);
  }, after, samples);
  await gen.stop();
  check(stillRunning, "no stream ended during the sampled window");
  check(live.length === samples && live.every((v) => v > 0), `tokens/s is non-zero in every 1 s sample while 4 streams generate (${live.map((v) => v.toFixed(0)).join(", ")})`);
  check(headline.length > 0 && headline.every((t) => Number(t) > 0), `the tokens/s headline never read 0 (${[...new Set(headline)].join(", ")})`);

  // 4. Latency charts, history charts, status, no script errors.
  await page.waitForFunction(() => {
    const d = window.rillDashboard;
    const tps = d.charts["c-tps"];
    return d.snapshots >= 4 && tps && tps.data[0].length >= 4 && tps.data[1].some((v) => v > 0);
  }, { timeout: 60000 });
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
  check(seen.ttftPoints >= 1 && seen.itlPoints >= 1, "the latency charts received data");
  check(seen.historySeries >= 3, "the history chart has series");
  check(seen.status === "live", `the status reads live (${seen.status})`);
  check(errors.length === 0, `no script errors (${errors.join("; ")})`);
  const shot = path.join(shots, `dashboard-${browserName}.png`);
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`dashboard (${browserName}): all checks passed, screenshot at ${shot}`);
} finally {
  if (browser) await browser.close();
  server.kill("SIGTERM");
}
