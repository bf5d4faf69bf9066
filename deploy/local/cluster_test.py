"""The local cluster under a rolling restart (run by .ci/run; Python standard library only).

Usage: python3 deploy/local/cluster_test.py PORT
Brings up `deploy/local/cluster.sh up 3 PORT` (RILL_BIN picks the binary), then checks:
- each replica exposes the gateway gauges under vLLM's names (`vllm:num_requests_running`,
  `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, `vllm:cache_config_info`), and they
  move while a request runs;
- SSE through HAProxy arrives token by token (the first content chunk of a long answer well
  before its end: no proxy buffering), and a WebSocket generation works through it (the
  upgrade passes);
- a resumable stream dropped mid-way resumes through HAProxy with `Last-Event-ID` (routed to
  its replica by the replica id in the stream id), nothing lost or repeated;
- a resumable stream too long to finish within its replica's grace period ends, when that
  replica is restarted, with the typed `server_shutdown` error event and `[DONE]` (the client
  is told to resubmit), and the replica comes back;
- 16 concurrent streaming clients for DURATION seconds (default 60) while each replica is
  restarted in turn: every request ends with a finish_reason and `[DONE]`, none fails, none is
  cut, no 5xx reaches a client.
Then `cluster.sh down`. Exits non-zero on the first failure.
"""

import base64
import http.client
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(ROOT, "deploy", "local", "cluster.sh")
N = 3


def check(cond, msg):
    if not cond:
        raise SystemExit(f"FAIL: {msg}")
    print(f"ok - {msg}", flush=True)


def cluster(*args):
    subprocess.run([CLUSTER, *map(str, args)], check=True, cwd=ROOT)


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("vllm:"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def sse(resp):
    """Yields (event id, data) of an SSE response, with the time each arrived."""
    eid, data = None, []
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.decode().rstrip("\r\n")
        if line == "":
            if data:
                yield eid, "\n".join(data), time.monotonic()
            eid, data = None, []
        elif line.startswith("id: "):
            eid = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])


def post(port, body, headers=None, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/chat/completions", json.dumps(body),
              {"content-type": "application/json", **(headers or {})})
    return c, c.getresponse()


def chat(q, max_tokens, **kw):
    return {"messages": [{"role": "user", "content": q}], "max_tokens": max_tokens, "stream": True, **kw}


def content_of(events):
    text, finish, done = "", None, False
    for _, data, _ in events:
        if data == "[DONE]":
            done = True
            continue
        j = json.loads(data)
        if "error" in j:
            return text, ("error", j["error"].get("code")), done
        for ch in j.get("choices", []):
            text += ch.get("delta", {}).get("content") or ""
            finish = ch.get("finish_reason") or finish
    return text, finish, done


def gauges(lb):
    for i in range(1, N + 1):
        m = metrics(lb + i)
        names = {k.split("{")[0] for k in m}
        check({"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
               "vllm:cache_config_info"} <= names, f"replica {i} exposes the vLLM-named gauges")
        check(any(k.startswith('vllm:cache_config_info{block_size="16",num_gpu_blocks="') for k in m),
              f"replica {i}: cache_config_info has block_size and num_gpu_blocks")
    # A request running on replica 1 moves its gauges.
    c, r = post(lb + 1, chat("Tell me a long story.", 200, ignore_eos=True, temperature=0))
    events = sse(r)
    next(events)
    next(events)
    # The scheduler publishes its counts once per step: poll until the running request shows.
    for _ in range(50):
        busy = metrics(lb + 1)
        if busy["vllm:num_requests_running"] == 1:
            break
        time.sleep(0.1)
    check(busy["vllm:num_requests_running"] == 1 and busy["vllm:kv_cache_usage_perc"] > 0,
          f"the gauges move with load ({busy})")
    c.close()
    for _ in range(50):
        idle = metrics(lb + 1)
        if idle["vllm:num_requests_running"] == 0:
            break
        time.sleep(0.1)
    check(idle["vllm:num_requests_running"] == 0, f"and back when it ends ({idle})")


def token_by_token(lb):
    c, r = post(lb, chat("Write a long story about the sea.", 160, ignore_eos=True, temperature=0))
    check(r.status == 200 and r.getheader("content-type", "").startswith("text/event-stream"), "SSE through HAProxy")
    times = [t for _, d, t in sse(r) if d != "[DONE]"]
    c.close()
    span = times[-1] - times[0]
    distinct = len({round(t, 3) for t in times})
    check(len(times) > 100 and distinct > 50 and times[1] - times[0] < span / 4,
          f"events arrive one by one through the proxy ({len(times)} events, {distinct} distinct arrival times over {span:.2f} s)")


def websocket(lb):
    """One `generate` over /v1/ws through HAProxy (a minimal RFC 6455 client)."""
    sock = socket.create_connection(("127.0.0.1", lb), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{lb}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    f = sock.makefile("rb")
    status = f.readline().decode()
    while f.readline() not in (b"\r\n", b""):
        pass
    check(" 101 " in status, f"the WebSocket upgrade passes through HAProxy ({status.strip()})")
    payload = json.dumps({"type": "generate", "id": "g1", "max_tokens": 12,
                          "messages": [{"role": "user", "content": "Name a colour."}]}).encode()
    mask = os.urandom(4)
    head = bytes([0x81]) + (bytes([0x80 | len(payload)]) if len(payload) < 126
                            else bytes([0x80 | 126]) + struct.pack(">H", len(payload)))
    sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    text, end = "", None
    while end is None:
        b0, b1 = f.read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", f.read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", f.read(8))[0]
        data = f.read(n)
        if b0 & 0x0F != 1:
            continue
        frame = json.loads(data)
        if frame["type"] == "token":
            text += frame["token"]["text"] if "token" in frame else frame["text"]
        elif frame["type"] in ("complete", "error"):
            end = frame
    sock.close()
    check(end["type"] == "complete" and text, f"a WebSocket generation through HAProxy ({text!r}, {end.get('finish_reason')})")


def resume(lb):
    body = chat("Describe a lighthouse in detail.", 120, ignore_eos=True, temperature=0)
    c, r = post(lb, dict(body, stream=True))
    want, _, _ = content_of(sse(r))
    c.close()
    c, r = post(lb, body, {"X-Rill-Resumable": "true"})
    sid = r.getheader("x-rill-stream-id")
    check(sid and "." in sid and sid.rsplit(".", 1)[1] in {f"r{i}" for i in range(1, N + 1)},
          f"the stream id names its replica ({sid})")
    first, last_id = [], None
    for eid, data, t in sse(r):
        first.append((eid, data, t))
        last_id = eid
        if len(first) == 20:
            break
    c.close()  # dropped mid-way
    time.sleep(0.3)
    owner = int(sid.rsplit(".r", 1)[1])
    other = lb + (owner % N) + 1
    c = http.client.HTTPConnection("127.0.0.1", other, timeout=10)
    c.request("GET", f"/v1/streams/{sid}", headers={"Last-Event-ID": last_id})
    check(c.getresponse().status == 404, "another replica does not know the stream (so routing matters)")
    c = http.client.HTTPConnection("127.0.0.1", lb, timeout=120)
    c.request("GET", f"/v1/streams/{sid}", headers={"Last-Event-ID": last_id})
    r = c.getresponse()
    check(r.status == 200, f"GET /v1/streams/{{id}} through HAProxy reaches the owner ({r.status})")
    rest = list(sse(r))
    text, finish, done = content_of(first + rest)
    check(text == want and finish == "length" and done, "resumed through HAProxy: nothing lost or repeated")


def outlives_grace(lb):
    grace = float(os.environ.get("RILL_GRACE", "15"))
    body = chat("Write a very long story about the sea.", 6000, ignore_eos=True, temperature=0)
    c, r = post(lb, body, {"X-Rill-Resumable": "true"}, timeout=grace + 60)
    sid = r.getheader("x-rill-stream-id")
    check(r.status == 200 and sid, f"a long resumable stream started ({sid})")
    events = sse(r)
    next(events)
    owner = int(sid.rsplit(".r", 1)[1])
    t0 = time.monotonic()
    restart = threading.Thread(target=cluster, args=("restart", owner))
    restart.start()
    rest = list(events)
    ended = time.monotonic() - t0
    c.close()
    restart.join()
    text, finish, _ = content_of(rest)
    done = bool(rest) and rest[-1][1] == "[DONE]"
    check(finish == ("error", "server_shutdown") and done,
          f"it ends with server_shutdown and [DONE] after the grace period ({ended:.1f} s, {len(text)} chars, {finish})")
    check(ended < grace + 10, f"within the grace period ({ended:.1f} s, grace {grace:.0f} s)")


class Load:
    def __init__(self, lb):
        self.lb, self.stop = lb, threading.Event()
        self.ok = self.failed = 0
        self.failures = []
        self.lock = threading.Lock()

    def client(self, k):
        rng = random.Random(k)
        while not self.stop.is_set():
            body = chat(rng.choice(["Name a colour.", "Say something about rivers.", "Count to ten.",
                                    "What is a lighthouse?"]), rng.randint(8, 40), temperature=0.7)
            try:
                c, r = post(self.lb, body, timeout=60)
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
                text, finish, done = content_of(sse(r))
                c.close()
                if finish not in ("stop", "length") or not done:
                    raise RuntimeError(f"ended with {finish!r}, [DONE] {done}, after {len(text)} chars")
                with self.lock:
                    self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with self.lock:
                    self.failed += 1
                    self.failures.append(repr(e))


def rolling(lb, duration):
    load = Load(lb)
    threads = [threading.Thread(target=load.client, args=(k,)) for k in range(16)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    restarted = 0
    time.sleep(3)
    for i in range(1, N + 1):
        cluster("restart", i)
        restarted += 1
        time.sleep(2)
    while time.monotonic() - t0 < duration:
        time.sleep(0.5)
    load.stop.set()
    for t in threads:
        t.join()
    print(f"{load.ok} requests in {time.monotonic() - t0:.0f} s, {restarted} restarts, {load.failed} failed", flush=True)
    check(restarted == N, "every replica restarted in turn")
    check(load.failed == 0, f"no request failed, was cut or got a 5xx ({load.failures[:5]})")
    check(load.ok > 50, f"the load ran ({load.ok} requests)")


def main():
    lb = int(sys.argv[1])
    duration = float(os.environ.get("DURATION", "60"))
    cluster("up", N, lb)
    try:
        gauges(lb)
        token_by_token(lb)
        websocket(lb)
        resume(lb)
        outlives_grace(lb)
        rolling(lb, duration)
    finally:
        cluster("down")
    print("cluster: all checks passed")


if __name__ == "__main__":
    main()
