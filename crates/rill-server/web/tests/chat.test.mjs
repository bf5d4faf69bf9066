// The chat page in a headless browser (chromium or firefox) against a real `rill serve` with the
// real model: streamed text grows; Stop ends the answer as stopped and frees the server's
// sequence; a connection cut mid-answer reconnects and resumes to the same text an
// uninterrupted greedy run gives; model text with <script> or event handlers never executes;
// keyboard-only use; phone width; with WebSockets blocked the page falls back to SSE (and
// resumes there); a message sent while the WebSocket is still connecting is answered over SSE
// when that connection then fails; with tools in Settings a tool call shows as a code block of
// its arguments (over WebSocket and SSE). Screenshots go to target/screenshots/chat-BROWSER-*.png.
// Usage: node crates/rill-server/web/tests/chat.test.mjs PATH_TO_RILL_BINARY [chromium|firefox]
import net from "node:net";
import path from "node:path";
import { browserName, check, launch, newPage, shots, sleep, startServer, textOf } from "./harness.mjs";

const shot = (name) => path.join(shots, `chat-${browserName}-${name}.png`);
const { base, proc: server } = await startServer();
let browser;
let blackhole;

async function runningSequences() {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = text.match(/^rill_running_sequences (\d+)/m);
  return m ? Number(m[1]) : -1;
}

async function openPage(page) {
  await page.goto(`${base}/`);
  await page.waitForFunction(() => document.getElementById("conn").textContent === "connected", { timeout: 20000 });
  await page.waitForFunction(() => document.getElementById("model").textContent !== "…");
}

async function setParams(page, { temperature, maxTokens }) {
  await page.evaluate((t, m) => {
    for (const [id, v] of [["temperature", t], ["max_tokens", m]]) {
      const el = document.getElementById(id);
      el.value = String(v);
      el.dispatchEvent(new Event("input", { bubbles: true }));
    }
  }, temperature, maxTokens);
}

async function ask(page, text) {
  await page.focus("#input");
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => window.rillChat.busy, { timeout: 10000 });
}

// Asks for a forced tool call with the Settings' tools; checks the call and its code block.
async function toolCall(page, transport) {
  await page.evaluate(() => {
    document.getElementById("tools").value = JSON.stringify([{ type: "function", function: { name: "get_weather",
      parameters: { type: "object", properties: { city: { type: "string", maxLength: 20 } }, required: ["city"] } } }]);
    document.getElementById("tool_choice").value = "required";
  });
  await ask(page, "What is the weather in Paris?");
  await waitIdle(page, 60000);
  const a = await lastAnswer(page);
  const call = a.calls[0];
  check(a.finish === "tool_calls" && call && call.function.name === "get_weather", `${transport}: a tool call ends the answer (${JSON.stringify(a)})`);
  const args = JSON.parse(call.function.arguments);
  check(typeof args.city === "string", `${transport}: the call's arguments are the tool's (${call.function.arguments})`);
  const shown = await page.evaluate(() => {
    const code = document.querySelector(".msg.assistant:last-child .body pre code");
    return { code: code ? code.textContent : null, text: document.querySelector(".msg.assistant:last-child .body").textContent };
  });
  check(shown.code !== null && JSON.stringify(JSON.parse(shown.code)) === JSON.stringify(args) && shown.text.includes("get_weather"),
    `${transport}: the call shows as a code block of its arguments (${JSON.stringify(shown)})`);
  await page.evaluate(() => { document.getElementById("tools").value = ""; });
}

const waitIdle = (page, ms = 120000) => page.waitForFunction(() => !window.rillChat.busy, { timeout: ms });
const lastAnswer = (page) => page.evaluate(() => window.rillChat.answers[window.rillChat.answers.length - 1]);

try {
  browser = await launch();
  const page = await newPage(browser, 1100, 900);
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
  const stats = await textOf(page, ".msg.assistant:last-child .stats");
  check(/TTFT \d+ ms/.test(stats) && /tok\/s/.test(stats) && /tokens/.test(stats), `stats under the answer: ${stats}`);
  check((await textOf(page, "#announcer")).trim().length > 0, "the live region announced the answer");
  await page.screenshot({ path: shot("stream"), fullPage: true });

  // 2. Stop: the answer ends as stopped and the server frees the sequence.
  await setParams(page, { temperature: 0.7, maxTokens: 400 });
  await ask(page, "Tell me a long story about a lighthouse keeper and his cat.");
  await page.waitForFunction(() => (window.rillChat.current || { raw: "" }).raw.length > 20, { timeout: 60000 });
  await page.click("#stop");
  await waitIdle(page);
  const stopped = await lastAnswer(page);
  check(stopped.finish === "cancelled", `Stop ends the answer as cancelled (${stopped.finish})`);
  check(await page.evaluate(() => document.querySelector(".msg.assistant:last-child").classList.contains("stopped")), "the answer is marked stopped");
  let running = -1;
  for (let i = 0; i < 50 && running !== 0; i++) { running = await runningSequences(); await sleep(100); }
  check(running === 0, "the server freed the stopped sequence");
  await page.screenshot({ path: shot("stop"), fullPage: true });

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
  await page.waitForFunction(() => (window.rillChat.current || { raw: "" }).raw.length > 25, { timeout: 60000 });
  await page.evaluate(() => window.rillChat.dropConnection());
  await waitIdle(page);
  const resumed = await lastAnswer(page);
  const reconnects = await page.evaluate(() => window.rillChat.reconnects);
  check(reconnects >= 1, `the page reconnected (${reconnects})`);
  check(!resumed.error, `no error after the cut (${JSON.stringify(resumed.error)})`);
  check(resumed.text === want, `resumed text equals the uninterrupted run\n  got:  ${JSON.stringify(resumed.text)}\n  want: ${JSON.stringify(want)}`);
  await page.screenshot({ path: shot("resume"), fullPage: true });

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
  await page.setViewport({ width: 390, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  check(!overflow, "no horizontal scrolling at phone width");
  await page.screenshot({ path: shot("mobile"), fullPage: true });
  await page.setViewport({ width: 1100, height: 900 });
  await setParams(page, { temperature: 0, maxTokens: 80 });
  await toolCall(page, "ws");
  await page.screenshot({ path: shot("tool-call"), fullPage: true });
  check(errors.length === 0, `no script errors (${errors.join("; ")})`);

  // 6. WebSockets blocked: the page falls back to SSE, and still resumes after a cut.
  const sse = await newPage(browser, 1100, 900);
  await sse.evaluateOnNewDocument(() => {
    window.WebSocket = class {
      constructor() { setTimeout(() => this.onclose && this.onclose({}), 5); }
      send() {}
      close() {}
    };
    window.WebSocket.OPEN = 1;
  });
  await sse.goto(`${base}/`);
  await sse.waitForFunction(() => window.rillChat && window.rillChat.transport === "sse", { timeout: 10000 });
  await setParams(sse, { temperature: 0, maxTokens: 80 });
  await ask(sse, question);
  await sse.waitForFunction(() => (window.rillChat.current || { raw: "" }).raw.length > 25, { timeout: 60000 });
  await sse.evaluate(() => window.rillChat.dropConnection());
  await waitIdle(sse);
  const viaSse = await lastAnswer(sse);
  check((await sse.evaluate(() => window.rillChat.reconnects)) >= 1, "the SSE fallback reconnected with Last-Event-ID");
  check(viaSse.text === want, `over SSE, after a cut, the same text (${JSON.stringify(viaSse.text.slice(0, 40))}…)`);
  await toolCall(sse, "sse");

  // 7. A message sent while the WebSocket is still connecting, whose connection then fails: the
  // page falls back to SSE and the answer arrives there. The page's WebSocket goes to a TCP
  // server that accepts and never answers the handshake, then drops the connection.
  const held = new Set();
  blackhole = net.createServer((sock) => { held.add(sock); sock.on("error", () => {}); });
  const holdPort = await new Promise((r) => blackhole.listen(0, "127.0.0.1", () => r(blackhole.address().port)));
  const late = await newPage(browser, 1100, 900);
  const lateErrors = [];
  late.on("pageerror", (e) => lateErrors.push(String(e)));
  await late.evaluateOnNewDocument((port) => {
    const Real = window.WebSocket;
    window.WebSocket = class extends Real {
      constructor(url, protocols) { super(url.replace(/^(wss?:\/\/)[^/]+/, (_, scheme) => `${scheme}127.0.0.1:${port}`), protocols); }
    };
  }, holdPort);
  await late.goto(`${base}/`);
  for (let i = 0; i < 100 && held.size === 0; i++) await sleep(50);
  check(held.size === 1, "the page's WebSocket is connecting (its TCP connection is held)");
  await setParams(late, { temperature: 0, maxTokens: 80 });
  await ask(late, question);
  const before = await late.evaluate(() => ({ transport: window.rillChat.transport, conn: document.getElementById("conn").textContent }));
  check(before.transport === "ws" && before.conn === "connecting…", `the message was sent while connecting (${JSON.stringify(before)})`);
  for (const s of held) s.destroy();
  await late.waitForFunction(() => window.rillChat.transport === "sse", { timeout: 10000 });
  await waitIdle(late, 60000);
  const viaFallback = await lastAnswer(late);
  check(!viaFallback.error, `no error after the fallback (${JSON.stringify(viaFallback.error)})`);
  check(viaFallback.text === want, `the queued message is answered over SSE (${JSON.stringify(viaFallback.text.slice(0, 40))}…)`);
  // Firefox reports the failed WebSocket handshake (the failure this case makes) as a page error.
  const unexpected = lateErrors.filter((e) => !e.includes(`ws://127.0.0.1:${holdPort}/`));
  check(unexpected.length === 0, `no script errors but the refused WebSocket (${lateErrors.join("; ")})`);
  await late.screenshot({ path: shot("fallback"), fullPage: true });
  console.log(`chat (${browserName}): all checks passed; screenshots in ${shots}`);
} finally {
  if (browser) await browser.close();
  if (blackhole) blackhole.close();
  server.kill("SIGTERM");
}
