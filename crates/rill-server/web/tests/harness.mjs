// Shared by the browser tests: the repository's paths, a `rill serve` on a free port with the
// real model, and a headless browser driven by puppeteer-core: Debian's chromium (CDP) or
// Debian's firefox-esr (WebDriver BiDi), chosen by the test's second argument or $BROWSER.
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

/** The repository root (this file is in crates/rill-server/web/tests). */
export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
/** The rill binary: the first argument, or target/debug/rill. */
export const rill = path.resolve(process.argv[2] || path.join(root, "target/debug/rill"));
/** `chromium` or `firefox`: the second argument, or $BROWSER, or chromium. */
export const browserName = process.argv[3] || process.env.BROWSER || "chromium";
if (!["chromium", "firefox"].includes(browserName)) throw new Error(`unknown browser ${browserName} (chromium or firefox)`);
/** Where screenshots go. */
export const shots = path.join(root, "target/screenshots");
mkdirSync(shots, { recursive: true });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Logs `ok - msg`, or fails the test with `FAIL: msg`. */
export function check(cond, msg) {
  if (!cond) { process.exitCode = 1; throw new Error(`FAIL: ${msg}`); }
  console.log(`ok - ${msg} [${browserName}]`);
}

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

/** Starts `rill serve` with `args` on a free port; resolves once /ready answers. */
export async function startServer(args = []) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const proc = spawn(rill, ["serve", "--port", String(port), "-t", "2", ...args], { stdio: "inherit" });
  const t0 = Date.now();
  while (Date.now() - t0 < 300000) {
    if (proc.exitCode !== null) throw new Error(`rill serve exited with ${proc.exitCode}`);
    try { if ((await fetch(`${base}/ready`)).ok) return { base, port, proc }; } catch { /* not up yet */ }
    await sleep(300);
  }
  proc.kill("SIGTERM");
  throw new Error("rill serve did not become ready");
}

/** Launches the chosen browser headless ($CHROMIUM / $FIREFOX override the executables). */
export function launch() {
  if (browserName === "firefox") {
    return puppeteer.launch({
      browser: "firefox",
      executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
      headless: true,
      // No first-run pages, update checks or telemetry in the throwaway profile.
      extraPrefsFirefox: { "browser.shell.checkDefaultBrowser": false, "app.update.enabled": false },
    });
  }
  return puppeteer.launch({
    browser: "chrome",
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox"],
  });
}

/** A new page of `width` x `height` CSS pixels. */
export async function newPage(browser, width, height) {
  const page = await browser.newPage();
  await page.setViewport({ width, height });
  return page;
}

/** The text content of the first element matching `selector`. */
export const textOf = (page, selector) => page.$eval(selector, (e) => e.textContent);
