// rill's chat page. Plain script, no build step. Streams over the WebSocket protocol of
// /v1/ws (falling back to SSE when WebSockets are blocked), renders markdown incrementally
// (marked, sanitised by DOMPurify: model text never reaches the DOM unsanitised), paces bursts
// of coalesced tokens through a small jitter buffer, and resumes an answer after a dropped
// connection (every generation is resumable; the page reconnects with backoff and asks for
// the tokens after the last position it showed). A message sent while the WebSocket is still
// connecting waits for it, and goes over SSE if the socket then fails. With tools (Settings,
// OpenAI's JSON), each tool call the model makes shows as a code block: the function's name,
// then its arguments as they stream.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const key = new URLSearchParams(location.search).get("api_key");
  const withKey = (u) => (key ? `${u}${u.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(key)}` : u);
  const authHeaders = key ? { Authorization: `Bearer ${key}` } : {};
  const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  const conversation = []; // {role, content}
  let current = null; // the answer being generated
  let counter = 0;
  const hooks = { reconnects: 0, transport: "ws", answers: [] };

  // ---- rendering ------------------------------------------------------------------------
  function renderMarkdown(el, text) {
    el.innerHTML = DOMPurify.sanitize(marked.parse(text, { gfm: true, breaks: false }));
  }

  function addMessage(role, text) {
    const li = document.createElement("li");
    li.className = `msg ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("div");
    body.className = "body";
    li.append(who, body);
    if (role === "user") body.textContent = text;
    $("messages").appendChild(li);
    li.scrollIntoView({ block: "end", behavior: reducedMotion ? "auto" : "smooth" });
    return li;
  }

  function answerMeta(li, answer) {
    const meta = document.createElement("div");
    meta.className = "meta";
    const stats = document.createElement("span");
    stats.className = "stats";
    stats.textContent = "waiting…";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(answer.raw); copy.textContent = "Copied"; }
      catch { copy.textContent = "Copy failed"; }
      setTimeout(() => (copy.textContent = "Copy"), 1500);
    });
    const regen = document.createElement("button");
    regen.type = "button";
    regen.textContent = "Regenerate";
    regen.className = "regen";
    regen.addEventListener("click", regenerate);
    meta.append(stats, copy, regen);
    li.appendChild(meta);
    return stats;
  }

  // ---- the jitter buffer: pace coalesced bursts into a steady flow -----------------------
  function pump() {
    const a = current;
    if (!a) return;
    if (a.pending.length) {
      const n = reducedMotion ? a.pending.length : Math.max(1, Math.ceil(a.pending.length / 6));
      a.shown += a.pending.slice(0, n);
      a.pending = a.pending.slice(n);
      renderMarkdown(a.body, a.shown);
      announceSentences(a, false);
    }
    if (a.pending.length || !a.done) requestAnimationFrame(pump);
    else finish(a);
  }

  // Screen readers hear completed sentences, not every token.
  function announceSentences(a, all) {
    const rest = a.shown.slice(a.announced);
    const m = all ? rest : (rest.match(/^[\s\S]*[.!?:](\s|$)/) || [""])[0];
    if (m.trim()) { $("announcer").textContent = m.trim(); a.announced += m.length; }
  }

  // ---- requests -------------------------------------------------------------------------
  function params() {
    const num = (id) => { const v = $(id).value.trim(); return v === "" ? undefined : Number(v); };
    const p = { temperature: num("temperature"), top_p: num("top_p") };
    const seed = num("seed");
    if (seed !== undefined) p.seed = seed;
    const tools = $("tools").value.trim();
    if (tools) {
      p.tools = JSON.parse(tools); // a syntax error is reported on the answer by start()
      p.tool_choice = $("tool_choice").value;
    }
    return { params: p, max_tokens: num("max_tokens") || 256 };
  }

  function messages() {
    const sys = $("system").value.trim();
    return (sys ? [{ role: "system", content: sys }] : []).concat(conversation);
  }

  function start() {
    const li = addMessage("assistant", "");
    li.querySelector(".body").classList.add("cursor");
    const a = {
      id: `c${Date.now().toString(36)}${counter++}`, li, body: li.querySelector(".body"),
      raw: "", shown: "", pending: "", announced: 0, lastPosition: -1, done: false,
      finish: null, error: null, summary: null, streamId: null, lastEventId: null, calls: [],
    };
    a.stats = answerMeta(li, a);
    current = a;
    setBusy(true);
    requestAnimationFrame(pump);
    let req;
    try { req = params(); } catch (e) { onError(a, "invalid_tools", `Tools must be a JSON array of OpenAI tools: ${e.message}`); return; }
    transport.generate(a, messages(), req.max_tokens, req.params);
  }

  function onQueued(a, position) { if (!a.raw) a.stats.textContent = `queued: position ${position}`; }
  function onToken(a, text, position) {
    if (position !== undefined && position !== null) a.lastPosition = position;
    if (!text) return;
    a.raw += text;
    a.pending += text;
    if (a.stats.textContent.startsWith("queued") || a.stats.textContent === "waiting…") a.stats.textContent = "…";
  }
  // A tool call's first piece (with its name) opens a code block; the next ones stream its
  // arguments into it; the next call or the end closes it. Only the display shows the block:
  // the conversation keeps the call as a tool call.
  function onToolCall(a, index, id, name, args) {
    if (name) {
      if (a.calls.length) a.pending += "\n```\n";
      a.calls[index] = { id: id || `call_${index}`, type: "function", function: { name, arguments: "" } };
      a.pending += `\n\n**Tool call** \`${name}\`\n\n\`\`\`json\n`;
    }
    const c = a.calls[index];
    if (c && args) { c.function.arguments += args; a.pending += args; }
    if (a.stats.textContent.startsWith("queued") || a.stats.textContent === "waiting…") a.stats.textContent = "…";
  }
  function onComplete(a, finish, summary) {
    if (a.calls.length && !a.done) a.pending += "\n```\n";
    a.finish = finish; a.summary = summary; a.done = true;
  }
  function onError(a, code, message) { a.error = { code, message }; a.done = true; }

  function finish(a) {
    a.body.classList.remove("cursor");
    renderMarkdown(a.body, a.shown);
    announceSentences(a, true);
    if (a.error) {
      a.li.classList.add("error");
      const p = document.createElement("p");
      p.className = "errmsg";
      p.textContent = `Error (${a.error.code}): ${a.error.message}`;
      a.body.appendChild(p);
      a.stats.textContent = "failed";
      $("announcer").textContent = `Error: ${a.error.message}`;
    } else {
      const s = a.summary || {};
      const parts = [];
      if (s.ttft_ms) parts.push(`TTFT ${Math.round(s.ttft_ms)} ms`);
      if (s.tokens_per_second) parts.push(`${s.tokens_per_second.toFixed(1)} tok/s`);
      if (s.total_tokens !== undefined) parts.push(`${s.total_tokens} tokens`);
      parts.push(a.finish || "stop");
      a.stats.textContent = parts.join(" · ");
      if (a.finish === "cancelled") a.li.classList.add("stopped");
      conversation.push(a.calls.length ? { role: "assistant", content: a.raw, tool_calls: a.calls } : { role: "assistant", content: a.raw });
    }
    hooks.answers.push({ text: a.raw, finish: a.finish, error: a.error, calls: a.calls });
    current = null;
    setBusy(false);
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  function regenerate() {
    if (current) return;
    const items = $("messages").children;
    const last = items[items.length - 1];
    if (!last || !last.classList.contains("assistant")) return;
    last.remove();
    if (conversation.length && conversation[conversation.length - 1].role === "assistant") conversation.pop();
    start();
  }

  // ---- transports -----------------------------------------------------------------------
  class WsTransport {
    constructor() {
      this.ws = null; this.backoff = 250; this.opened = false;
      this.queue = []; // frames waiting for the connection (cancel)
      this.pending = []; // generations waiting for the connection: {a, msgs, max_tokens, p}
      this.connect();
    }
    url() { return withKey(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`); }
    connect() {
      const ws = new WebSocket(this.url(), ["rill.json"]);
      this.ws = ws;
      ws.onopen = () => {
        this.opened = true; this.backoff = 250; setConn("live", "connected");
        // An answer that was streaming when the connection dropped continues where it was...
        if (current && !current.done && current.sent) {
          ws.send(JSON.stringify({ type: "resume", id: current.id, after_position: current.lastPosition }));
        }
        // ...and what was asked while connecting goes out now.
        for (const g of this.pending.splice(0)) this.start(g);
        for (const f of this.queue.splice(0)) ws.send(f);
      };
      ws.onmessage = (e) => this.frame(JSON.parse(e.data));
      ws.onclose = () => {
        if (!this.opened) {
          // WebSockets do not get through: SSE takes over, with whatever was waiting to be sent.
          fallbackToSse(this.pending.splice(0));
          return;
        }
        setConn("down", "reconnecting…");
        hooks.reconnects += 1;
        setTimeout(() => this.connect(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, 5000);
      };
    }
    isOpen() { return this.ws && this.ws.readyState === WebSocket.OPEN; }
    send(obj) {
      const f = JSON.stringify(obj);
      if (this.isOpen()) this.ws.send(f); else this.queue.push(f);
    }
    start(g) {
      g.a.sent = true;
      this.ws.send(JSON.stringify({ type: "generate", id: g.a.id, messages: g.msgs, max_tokens: g.max_tokens, params: g.p, resumable: true }));
    }
    generate(a, msgs, max_tokens, p) {
      const g = { a, msgs, max_tokens, p };
      if (this.isOpen()) this.start(g); else this.pending.push(g);
    }
    cancel(a) {
      const i = this.pending.findIndex((g) => g.a === a);
      // Never sent: nothing runs on the server, the answer just ends.
      if (i >= 0) { this.pending.splice(i, 1); onComplete(a, "cancelled", null); return; }
      this.send({ type: "cancel", id: a.id });
    }
    frame(f) {
      const a = current;
      if (!a || f.id !== a.id) {
        if (f.type === "error" && !f.id) console.warn("rill:", f.error);
        return;
      }
      if (f.type === "queued") onQueued(a, f.position);
      else if (f.type === "token") {
        if (f.token) onToken(a, f.token.text, f.token.position);
        else onToken(a, f.text, f.tokens.length ? f.tokens[f.tokens.length - 1].position : undefined);
      } else if (f.type === "tool_call") onToolCall(a, f.index, f.call_id, f.name, f.arguments);
      else if (f.type === "complete") onComplete(a, f.finish_reason, f.summary);
      else if (f.type === "error") onError(a, f.error.code, f.error.message);
    }
    drop() { if (this.ws) this.ws.close(); }
  }

  class SseTransport {
    constructor() { this.ctrl = null; setConn("live", "connected (SSE)"); }
    async generate(a, msgs, max_tokens, p) {
      const body = { messages: msgs, max_tokens, stream: true, stream_options: { include_usage: true }, ...p };
      this.read(a, () => fetch("/v1/chat/completions", {
        method: "POST", headers: { "content-type": "application/json", "x-rill-resumable": "true", ...authHeaders },
        body: JSON.stringify(body), signal: (this.ctrl = new AbortController()).signal,
      }));
    }
    async read(a, open) {
      let backoff = 250;
      for (;;) {
        try {
          const r = await open();
          if (!r.ok) { const e = await r.json().catch(() => ({})); onError(a, (e.error && e.error.code) || `http_${r.status}`, (e.error && e.error.message) || r.statusText); return; }
          a.streamId = a.streamId || r.headers.get("x-rill-stream-id");
          const reader = r.body.getReader();
          const dec = new TextDecoder();
          let buf = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += dec.decode(value, { stream: true });
            let i;
            while ((i = buf.indexOf("\n\n")) >= 0) {
              const block = buf.slice(0, i); buf = buf.slice(i + 2);
              let id = null, data = "";
              for (const line of block.split("\n")) {
                if (line.startsWith("id: ")) id = line.slice(4);
                else if (line.startsWith("data: ")) data += line.slice(6);
              }
              if (!data) continue;
              if (id) a.lastEventId = id;
              if (data === "[DONE]") { if (!a.done) onComplete(a, a.finish || "stop", a.summary); return; }
              const j = JSON.parse(data);
              if (j.error) { onError(a, j.error.code, j.error.message); continue; }
              const c = j.choices && j.choices[0];
              if (c && c.delta && c.delta.content) onToken(a, c.delta.content);
              for (const t of (c && c.delta && c.delta.tool_calls) || []) onToolCall(a, t.index, t.id, t.function && t.function.name, t.function && t.function.arguments);
              if (c && c.finish_reason) a.finish = c.finish_reason;
              if (j.timings) a.summary = { ttft_ms: j.timings.ttft_ms, tokens_per_second: j.timings.generation_tokens_per_s, total_tokens: j.usage ? j.usage.completion_tokens : undefined };
            }
          }
          if (a.done) return;
        } catch (e) {
          if (a.done || (e && e.name === "AbortError" && a.cancelled)) return;
        }
        // Dropped mid-answer: resume after the last event we have.
        if (!a.streamId) { onError(a, "network", "the connection dropped before the stream started"); return; }
        hooks.reconnects += 1;
        setConn("down", "reconnecting…");
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 5000);
        open = () => fetch(withKey(`/v1/streams/${a.streamId}`), { headers: { ...authHeaders, ...(a.lastEventId ? { "Last-Event-ID": a.lastEventId } : {}) } });
        setConn("live", "connected (SSE)");
      }
    }
    cancel(a) {
      if (a.streamId) fetch(withKey(`/v1/streams/${a.streamId}`), { method: "DELETE", headers: authHeaders });
    }
    drop() { if (this.ctrl) this.ctrl.abort(); }
  }

  let transport = new WsTransport();
  // Switches to SSE for good; generations the WebSocket never sent are started over SSE.
  function fallbackToSse(pending = []) {
    if (hooks.transport === "sse") return;
    hooks.transport = "sse";
    transport = new SseTransport();
    for (const g of pending) if (!g.a.done) transport.generate(g.a, g.msgs, g.max_tokens, g.p);
  }

  function setConn(cls, text) { const c = $("conn"); c.className = cls; c.textContent = text; }

  // ---- wiring ---------------------------------------------------------------------------
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || current) return;
    $("input").value = "";
    conversation.push({ role: "user", content: text });
    addMessage("user", text);
    start();
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => { if (current) { current.cancelled = true; transport.cancel(current); } });

  fetch(withKey("/v1/models"), { headers: authHeaders })
    .then((r) => r.json())
    .then((m) => { $("model").textContent = (m.data && m.data[0] && m.data[0].id) || "?"; })
    .catch(() => { $("model").textContent = "model unavailable"; });

  window.rillChat = {
    get busy() { return current !== null; },
    get current() { return current ? { raw: current.raw, shown: current.shown, lastPosition: current.lastPosition } : null; },
    get transport() { return hooks.transport; },
    get reconnects() { return hooks.reconnects; },
    answers: hooks.answers,
    dropConnection: () => transport.drop(),
    renderMarkdown,
  };
})();
