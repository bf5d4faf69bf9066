// The chat page in headless Chromium against a real `rill serve` with the real model: streamed
// text grows; Stop ends the answer as stopped and frees the server's sequence; a connection cut
// mid-answer reconnects and resumes to the same text an uninterrupted greedy run gives; model
// text with <script> or event handlers never executes; keyboard-only use; phone width.
// Screenshots go to target/screenshots/chat-*.png.
// Usage: node web/tests/chat.test.mjs PATH_TO_RILL_BINARY
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const rill = path.resolve(process.argv[2] || path.join(root, "target/debug/rill"));
const shots = path.join(root, "target/screenshots");
mkdirSync(shots, { recursive: true });

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}
function check(cond, msg) { if (!cond) { process.exitCode = 1; throw new Error(`FAIL: ${msg}`); } console.log(`ok - ${msg}`); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = spawn(rill, ["serve", "--port", String(port), "-t", "2"], { stdio: "inherit" });
let browser;

async function waitReady() {
  const t0 = Date.now();
  while (Date.now() - t0 < 300000) {
    if (server.exitCode !== null) throw new Error(`rill serve exited with ${server.exitCode}`);
    try { if ((await fetch(`${base}/ready`)).ok) return; } catch { /* not yet */ }
    await sleep(300);
  }
  throw new Error("rill serve did not become ready");
}

async function runningSequences() {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = text.match(/^rill_running_sequences (\d+)/m);
  return m ? Number(m[1]) : -1;
}

async function openPage(page) {
  await page.goto(`${base}/`);
  await page.waitForFunction(() => document.getElementById("conn").textContent === "connected", null, { timeout: 20000 });
  await page.waitForFunction(() => document.getElementById("model").textContent !== "…");
}

async function setParams(page, { temperature, maxTokens }) {
  await page.click("#settings summary");
  await page.fill("#temperature", String(temperature));
  await page.fill("#max_tokens", String(maxTokens));
  await page.click("#settings summary");
}

async function ask(page, text) {
  await page.focus("#input");
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => window.rillChat.busy, null, { timeout: 10000 });
}

const waitIdle = (page, ms = 120000) => page.waitForFunction(() => !window.rillChat.busy, null, { timeout: ms });
const lastAnswer = (page) => page.evaluate(() => window.rillChat.answers[window.rillChat.answers.length - 1]);

try {
  await waitReady();
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  // 1. Streamed text grows, then stats appear.
  await openPage(page);
  await setParams(page, { temperature: 0, maxTokens: 64 });
  await ask(page, "Write a haiku about the sea.");
  const lengths = [];
  while (await page.evaluate(() => window.rillChat.busy)) {
    lengths.push(await page.evaluate(() => (document.querySelector(".msg.assistant:last-child .body").textContent || "").length));
    await sleep(30);
  }
  const growth = lengths.filter((v, i) => i > 0 && v > lengths[i - 1]).length;
  check(growth >= 3, `the answer grew while streaming (${growth} increments over ${lengths.length} samples)`);
  const stats = await page.textContent(".msg.assistant:last-child .stats");
  check(/TTFT \d+ ms/.test(stats) && /tok\/s/.test(stats) && /tokens/.test(stats), `stats under the answer: ${stats}`);
  check((await page.textContent("#announcer")).trim().length > 0, "the live region announced the answer");
  await page.screenshot({ path: path.join(shots, "chat-stream.png"), fullPage: true });

  // 2. Stop: the answer ends as stopped and the server frees the sequence.
  await setParams(page, { temperature: 0.7, maxTokens: 400 });
  await ask(page, "Tell me a long story about a lighthouse keeper and his cat.");
  await page.waitForFunction(() => (window.rillChat.current || { raw: "" }).raw.length > 20, null, { timeout: 60000 });
  await page.click("#stop");
  await waitIdle(page);
  const stopped = await lastAnswer(page);
  check(stopped.finish === "cancelled", `Stop ends the answer as cancelled (${stopped.finish})`);
  check(await page.evaluate(() => document.querySelector(".msg.assistant:last-child").classList.contains("stopped")), "the answer is marked stopped");
  let running = -1;
  for (let i = 0; i < 50 && running !== 0; i++) { running = await runningSequences(); await sleep(100); }
  check(running === 0, "the server freed the stopped sequence");
  await page.screenshot({ path: path.join(shots, "chat-stop.png"), fullPage: true });

  // 3. A cut connection resumes to exactly the uninterrupted greedy text.
  const question = "Describe a lighthouse at night.";
  const reference = await (await fetch(`${base}/v1/chat/completions`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "system", content: "You are a helpful assistant." }, { role: "user", content: question }], max_tokens: 80, temperature: 0, top_p: 0.95 }),
  })).json();
  const want = reference.choices[0].message.content;
  await openPage(page); // a fresh conversation
  await setParams(page, { temperature: 0, maxTokens: 80 });
  await ask(page, question);
  await page.waitForFunction(() => (window.rillChat.current || { raw: "" }).raw.length > 25, null, { timeout: 60000 });
  await page.evaluate(() => window.rillChat.dropConnection());
  await waitIdle(page);
  const resumed = await lastAnswer(page);
  const reconnects = await page.evaluate(() => window.rillChat.reconnects);
  check(reconnects >= 1, `the page reconnected (${reconnects})`);
  check(!resumed.error, `no error after the cut (${JSON.stringify(resumed.error)})`);
  check(resumed.text === want, `resumed text equals the uninterrupted run\n  got:  ${JSON.stringify(resumed.text)}\n  want: ${JSON.stringify(want)}`);
  await page.screenshot({ path: path.join(shots, "chat-resume.png"), fullPage: true });

  // 4. Model text is sanitised: no script runs, no handler fires, no javascript: link.
  const xss = await page.evaluate(async () => {
    const el = document.createElement("div");
    document.body.appendChild(el);
    window.rillChat.renderMarkdown(el, 'Hi <script>window.__pwned = 1</script> <img src="x" onerror="window.__pwned = 2"> [x](javascript:window.__pwned=3)\n\n```html\n<script>alert(1)</script>\n```');
    el.querySelectorAll("a").forEach((a) => a.click());
    await new Promise((r) => setTimeout(r, 300));
    return { pwned: window.__pwned, scripts: el.querySelectorAll("script").length, handlers: el.innerHTML.includes("onerror"), js: el.innerHTML.includes("javascript:"), code: el.querySelector("code") ? el.querySelector("code").textContent : "" };
  });
  check(xss.pwned === undefined && xss.scripts === 0 && !xss.handlers && !xss.js, `model <script> never executes (${JSON.stringify(xss)})`);
  check(xss.code.includes("<script>"), "code blocks show markup as text");

  // 5. Phone width stays usable.
  await page.setViewportSize({ width: 390, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  check(!overflow, "no horizontal scrolling at phone width");
  await page.screenshot({ path: path.join(shots, "chat-mobile.png"), fullPage: true });
  check(errors.length === 0, `no script errors (${errors.join("; ")})`);

  // 6. WebSockets blocked: the page falls back to SSE, and still resumes after a cut.
  const sse = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  await sse.addInitScript(() => {
    window.WebSocket = class {
      constructor() { setTimeout(() => this.onclose && this.onclose({}), 5); }
      send() {}
      close() {}
    };
    window.WebSocket.OPEN = 1;
  });
  await sse.goto(`${base}/`);
  await sse.waitForFunction(() => window.rillChat && window.rillChat.transport === "sse", null, { timeout: 10000 });
  await setParams(sse, { temperature: 0, maxTokens: 80 });
  await ask(sse, question);
  await sse.waitForFunction(() => (window.rillChat.current || { raw: "" }).raw.length > 25, null, { timeout: 60000 });
  await sse.evaluate(() => window.rillChat.dropConnection());
  await waitIdle(sse);
  const viaSse = await lastAnswer(sse);
  check((await sse.evaluate(() => window.rillChat.reconnects)) >= 1, "the SSE fallback reconnected with Last-Event-ID");
  check(viaSse.text === want, `over SSE, after a cut, the same text (${JSON.stringify(viaSse.text.slice(0, 40))}…)`);
  console.log(`chat: all checks passed; screenshots in ${shots}`);
} finally {
  if (browser) await browser.close();
  server.kill("SIGTERM");
}
