// The official OpenAI JavaScript SDK (npm `openai`) against a real `rill serve`: chat and
// completions, streamed and not, with usage, logprobs, tool calls (required and named, whole
// and streamed through the SDK's stream helper), `n` choices, and typed errors.
// Usage: node crates/rill-server/web/tests/openai-js.test.mjs PATH_TO_RILL_BINARY
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
const rill = path.resolve(process.argv[2] || path.join(root, "target/debug/rill"));
const KEY = "sk-rill-js";
function check(cond, msg) { if (!cond) { process.exitCode = 1; throw new Error(`FAIL: ${msg}`); } console.log(`ok - ${msg}`); }
const port = await new Promise((resolve) => {
  const s = net.createServer();
  s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const base = `http://127.0.0.1:${port}`;
const server = spawn(rill, ["serve", "--port", String(port), "-t", "2", "--api-key", KEY], { stdio: "inherit" });
try {
  const t0 = Date.now();
  for (;;) {
    try { if ((await fetch(`${base}/ready`, { headers: { Authorization: `Bearer ${KEY}` } })).ok) break; } catch { /* not yet */ }
    if (Date.now() - t0 > 300000 || server.exitCode !== null) throw new Error("rill serve did not start");
    await new Promise((r) => setTimeout(r, 300));
  }
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: KEY });
  const model = (await client.models.list()).data[0].id;
  const messages = [{ role: "user", content: "Name three colours." }];
  const full = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0 });
  const text = full.choices[0].message.content;
  check(full.object === "chat.completion" && text.length > 0, "chat completion");
  check(full.usage.total_tokens === full.usage.prompt_tokens + full.usage.completion_tokens, "usage adds up");
  const stream = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let streamed = "";
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) streamed += chunk.choices[0].delta.content || "";
    if (chunk.usage) usage = chunk.usage;
  }
  check(streamed === text, "streamed chat equals the non-streamed greedy text");
  check(usage && usage.completion_tokens === full.usage.completion_tokens, "usage chunk");
  const lp = await client.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3 });
  check(lp.choices[0].logprobs.content[0].top_logprobs.length === 3, "chat logprobs");
  const c = await client.completions.create({ model, prompt: "The capital of France is", max_tokens: 6, temperature: 0 });
  const cs = await client.completions.create({ model, prompt: "The capital of France is", max_tokens: 6, temperature: 0, stream: true });
  let ctext = "";
  for await (const chunk of cs) ctext += chunk.choices.length ? chunk.choices[0].text : "";
  check(c.choices[0].text.length > 0 && ctext === c.choices[0].text, "completions, streamed and not");
  // Tool calls: forced, whole and streamed (the SDK's chat stream helper assembles them).
  const tools = [{ type: "function", function: { name: "get_weather", description: "Weather in a city",
    parameters: { type: "object", properties: { city: { type: "string", maxLength: 30 } }, required: ["city"] } } }];
  const ask = [{ role: "user", content: "What is the weather in Paris?" }];
  for (const tool_choice of ["required", { type: "function", function: { name: "get_weather" } }]) {
    const body = { model, messages: ask, tools, tool_choice, parallel_tool_calls: false, max_tokens: 60, temperature: 0 };
    const whole = await client.chat.completions.create(body);
    const call = whole.choices[0].message.tool_calls[0];
    check(whole.choices[0].finish_reason === "tool_calls" && call.function.name === "get_weather"
      && typeof JSON.parse(call.function.arguments).city === "string", `tool call (${JSON.stringify(tool_choice)}): ${call.function.arguments}`);
    const runner = client.beta.chat.completions.stream(body);
    const final = await runner.finalChatCompletion();
    const scall = final.choices[0].message.tool_calls[0];
    check(scall.function.name === call.function.name && scall.function.arguments === call.function.arguments, "the streamed call assembles to the same call");
  }
  // n choices, each with its index.
  const many = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0.9, seed: 3, n: 3 });
  check(many.choices.length === 3 && many.choices.every((ch, i) => ch.index === i && ch.message.content.length > 0), "n = 3 choices");
  try {
    await client.chat.completions.create({ model, messages, top_p: 3 });
    check(false, "top_p=3 must fail");
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError && e.param === "top_p", `400 names the param (${e.param})`);
  }
  try {
    await new OpenAI({ baseURL: `${base}/v1`, apiKey: "wrong", maxRetries: 0 }).models.list();
    check(false, "a wrong key must fail");
  } catch (e) {
    check(e instanceof OpenAI.AuthenticationError, "401 with a wrong key");
  }
  console.log("openai js sdk: all checks passed");
} finally {
  server.kill("SIGTERM");
}
