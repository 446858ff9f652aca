// End-to-end test of the built-in console page (src/http/builtin/index.html) in a
// real browser: Debian's /usr/bin/chromium driven by playwright-core (no
// browser download). Run by scripts/browser-test, which builds the binary.
//
// It starts `wsloop server --console` on a free port, opens the page, sends
// a command and checks the matched reply, pushes a command from the server's
// stdin and checks the page's answer, checks the status panel, SIGKILLs and
// restarts the server and checks the page reconnects by itself and works
// again, and opens the page with ?token= against a token-protected server.
// Then over TLS: a CA and a leaf for 127.0.0.1 made here with `openssl`, the
// server started with --cert/--key, the CA trusted by Chromium (added to an
// NSS database under a temporary HOME with `certutil` from libnss3-tools;
// without certutil, the leaf's key pinned with Chromium's
// --ignore-certificate-errors-spki-list), and the page opened at
// https://127.0.0.1:PORT/ must connect over wss:// and round-trip a command.
// Last, the Devices panel against a server with --operator-token-file and
// --tokens and a real named device (`wsloop client --id`): it says so
// without the operator token and with a wrong one; given the right one it
// lists the device, sends it a command whose text is HTML (shown as text,
// never made into elements) and shows the reply; the list follows the
// device going offline, and a command queued meanwhile shows `queued`,
// then `replied` once the device is back.
// A screenshot goes to target/console.png. Prints `N passed, M failed` last.

import { execFileSync, spawn } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const BIN = process.env.WSLOOP_BIN || join(ROOT, "target/release/wsloop");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = join(ROOT, "target/console.png");
const TOTAL_TIMEOUT_MS = 60_000;
const WAIT_MS = 10_000;

const started = Date.now();
const results = []; // [name, ok, detail]
const servers = new Set();
let context = null;
let profile = null;
/** The TLS case's files: CA, leaf, NSS database (removed at exit). */
let certDir = null;
/** The Devices case's token files (removed at exit). */
let opsDir = null;

function elapsed() {
  return ((Date.now() - started) / 1000).toFixed(1) + "s";
}

function pass(name, detail = "") {
  results.push([name, true, detail]);
  console.log(`ok   ${name}${detail ? ` (${detail})` : ""} [${elapsed()}]`);
}

class CheckFailed extends Error {}

function fail(name, detail) {
  results.push([name, false, detail]);
  console.log(`FAIL ${name}: ${detail} [${elapsed()}]`);
  throw new CheckFailed(name);
}

/** Runs one named check; any exception in `body` fails it. */
async function check(name, body) {
  try {
    const detail = await body();
    pass(name, detail || "");
  } catch (err) {
    if (err instanceof CheckFailed) throw err;
    fail(name, String(err && err.message ? err.message.split("\n")[0] : err));
  }
}

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** Polls `pred` every 50 ms until it returns truthy, or throws after `ms`. */
async function until(what, pred, ms = WAIT_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Starts `wsloop server --console` on `port` (plus `extra` arguments);
 * resolves once it listens. */
async function startServer(port, env = {}, extra = []) {
  const childEnv = { ...process.env, ...env };
  if (!("WSLOOP_TOKEN" in env)) delete childEnv.WSLOOP_TOKEN;
  const child = spawn(BIN, ["server", "--address", `127.0.0.1:${port}`, "--console", ...extra], {
    stdio: ["pipe", "pipe", "pipe"],
    env: childEnv,
  });
  const server = { child, port, stdout: [], stderr: "", exited: false };
  servers.add(server);
  let partial = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (chunk) => {
    partial += chunk;
    const lines = partial.split("\n");
    partial = lines.pop();
    server.stdout.push(...lines);
  });
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => (server.stderr += chunk));
  child.stdin.on("error", () => {});
  child.on("exit", () => {
    server.exited = true;
    servers.delete(server);
  });
  await until(`the server to listen on port ${port}`, () => {
    if (server.exited) throw new Error(`server exited at start: ${server.stderr.trim()}`);
    return server.stdout.some((l) => l.startsWith("wsloop server on"));
  });
  return server;
}

async function kill(server) {
  if (server.exited) return;
  const gone = new Promise((r) => server.child.once("exit", r));
  server.child.kill("SIGKILL");
  await gone;
}

async function cleanup() {
  for (const s of [...servers]) {
    try {
      s.child.kill("SIGKILL");
    } catch {}
  }
  if (context) await context.close().catch(() => {});
  if (profile) rmSync(profile, { recursive: true, force: true });
  if (certDir) rmSync(certDir, { recursive: true, force: true });
  if (opsDir) rmSync(opsDir, { recursive: true, force: true });
}

/** Starts `wsloop client --id NAME --token-file FILE` against `port` (it
 * answers pushed commands as the article's client does); killed at exit
 * like the servers. */
function startDevice(port, name, tokenFile) {
  const child = spawn(BIN, ["client", "--address", `127.0.0.1:${port}`, "--id", name, "--token-file", tokenFile,
    "--reconnect-delay", "100ms"], { stdio: ["ignore", "ignore", "pipe"] });
  const device = { child, port, stdout: [], stderr: "", exited: false };
  servers.add(device);
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => (device.stderr += chunk));
  child.on("exit", () => {
    device.exited = true;
    servers.delete(device);
  });
  return device;
}

/** A test CA and a leaf for 127.0.0.1/localhost signed by it (ECDSA P-256,
 * valid 2 days), made with the `openssl` command in `dir`. Also makes the
 * trust Chromium needs: an NSS database with the CA under `dir/home` when
 * `certutil` is installed. Returns the paths, the leaf's SPKI hash and how
 * the CA is trusted. */
function makeCerts(dir) {
  const run = (cmd, args) => execFileSync(cmd, args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  run("openssl", ["req", "-x509", ...ec, "-days", "2", "-subj", "/CN=wsloop browser-test CA",
    "-keyout", "ca.key", "-out", "ca.pem",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]);
  run("openssl", ["req", ...ec, "-subj", "/CN=localhost", "-keyout", "leaf.key", "-out", "leaf.csr"]);
  writeFileSync(join(dir, "leaf.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  run("openssl", ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
    "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-out", "leaf.pem"]);
  // The base64 SHA-256 of the leaf's SubjectPublicKeyInfo, the form
  // --ignore-certificate-errors-spki-list takes.
  const leaf = new X509Certificate(readFileSync(join(dir, "leaf.pem")));
  const spki = createHash("sha256")
    .update(leaf.publicKey.export({ type: "spki", format: "der" }))
    .digest("base64");
  // Chromium on Linux trusts what $HOME/.pki/nssdb trusts, as a user's
  // `certutil -A` would: the CA itself, not just this leaf.
  const home = join(dir, "home");
  let trust = "spki-pin";
  try {
    mkdirSync(join(home, ".pki/nssdb"), { recursive: true });
    run("certutil", ["-N", "-d", `sql:${home}/.pki/nssdb`, "--empty-password"]);
    run("certutil", ["-A", "-d", `sql:${home}/.pki/nssdb`, "-n", "wsloop test CA", "-t", "C,,", "-i", "ca.pem"]);
    trust = "nss";
  } catch {}
  return { cert: join(dir, "leaf.pem"), key: join(dir, "leaf.key"), home, spki, trust };
}

function summary() {
  const passed = results.filter((r) => r[1]).length;
  const failed = results.length - passed;
  console.log(`\nbrowser test: ${results.length} check(s) in ${elapsed()}`);
  for (const [name, ok] of results) console.log(`  ${ok ? "ok  " : "FAIL"} ${name}`);
  console.log(`${passed} passed, ${failed} failed`);
  return failed;
}

/** Sends `cmd` from the page; returns the requestID the page used. */
async function sendFromPage(page, cmd) {
  await page.fill("#cmd", cmd);
  await page.click("#send", { timeout: WAIT_MS });
  const id = await page.locator("#log .request").last().getAttribute("data-request-id");
  const text = await page.locator(`#log .request[data-request-id="${id}"] .msg`).textContent();
  if (text !== cmd) throw new Error(`request row #${id} shows ${JSON.stringify(text)}`);
  return id;
}

/** Waits for the reply row to request `id` and checks its content. */
async function expectReply(page, id, cmd) {
  const reply = page.locator(`#log .reply[data-request-id="${id}"]`);
  await reply.waitFor({ timeout: WAIT_MS });
  const text = await reply.locator(".msg").textContent();
  const shown = await reply.locator(".cmd").textContent();
  const rtt = await reply.locator(".rtt").textContent();
  const ms = Number(await reply.getAttribute("data-rtt"));
  const want = `Command '${cmd}' processed successfully.`;
  if (text !== want) throw new Error(`reply #${id} says ${JSON.stringify(text)}, want ${JSON.stringify(want)}`);
  if (shown !== cmd) throw new Error(`reply #${id} names command ${shown}`);
  if (!/^\d+(\.\d)? ms$/.test(rtt) || !(ms >= 0 && ms < WAIT_MS)) throw new Error(`reply #${id} RTT ${rtt} / ${ms}`);
  if ((await reply.getAttribute("class")).includes("unmatched")) throw new Error(`reply #${id} unmatched`);
  return `#${id}, RTT ${rtt}`;
}

/** Debian's chromium with a fresh profile directory, headless, as root;
 * `tls` (from makeCerts) makes it trust the test CA. */
function launch(dir = profile, tls = null) {
  const extra = [];
  const options = {};
  if (tls && tls.trust === "nss") options.env = { ...process.env, HOME: tls.home };
  if (tls && tls.trust !== "nss") extra.push(`--ignore-certificate-errors-spki-list=${tls.spki}`);
  return chromium.launchPersistentContext(dir, {
    ...options,
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1100, height: 720 },
    args: [
      ...extra,
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: 20_000,
  });
}

async function main() {
  if (!existsSync(BIN)) fail("wsloop binary present", `${BIN} missing: run cargo build --release`);
  if (!existsSync(CHROMIUM)) fail("chromium present", `${CHROMIUM} missing: apt-get install chromium`);
  mkdirSync(join(ROOT, "target"), { recursive: true });

  const port = await freePort();
  let server = await startServer(port);
  const base = `http://127.0.0.1:${port}/`;

  profile = mkdtempSync(join(tmpdir(), "wsloop-chromium-"));
  await check(`${CHROMIUM} starts headless`, async () => {
    context = await launch();
    return context.browser() ? context.browser().version() : "";
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(WAIT_MS);
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(String(err)));

  await check("page loads from the built-in server at /", async () => {
    const resp = await page.goto(base, { timeout: WAIT_MS });
    if (resp.status() !== 200) throw new Error(`GET / answered ${resp.status()}`);
    const body = await page.textContent("body");
    for (const want of ["wsloop", `ws://127.0.0.1:${port}/server`, `wsloop client --address 127.0.0.1:${port}`]) {
      if (!body.includes(want)) throw new Error(`page does not mention ${want}`);
    }
    return `${(await resp.body()).length} bytes`;
  });

  await check("state becomes open", async () => {
    await page.waitForSelector('#state[data-state="open"]', { timeout: WAIT_MS });
    return await page.textContent("#state");
  });

  const cmd1 = "Eject the hot dog 1.";
  await check("sent command gets its matched reply with RTT", async () => {
    const id = await sendFromPage(page, cmd1);
    return await expectReply(page, id, cmd1);
  });

  await check("each of several requests is matched to its own reply", async () => {
    const cmds = ["Eject the hot dog 2.", "Check the mustard level"];
    const ids = [];
    for (const c of cmds) ids.push(await sendFromPage(page, c));
    const out = [];
    for (let i = 0; i < cmds.length; i++) out.push(await expectReply(page, ids[i], cmds[i]));
    return out.join("; ");
  });

  const pushed = "Restock the buns";
  await check("command pushed from the server's stdin is shown and answered", async () => {
    server.child.stdin.write(pushed + "\n");
    const row = page.locator("#log .pushed").filter({ hasText: pushed });
    await row.waitFor({ timeout: WAIT_MS });
    const id = await row.getAttribute("data-request-id");
    await page.locator(`#log .answer[data-request-id="${id}"]`).waitFor({ timeout: WAIT_MS });
    const line = await until("the server to print the page's reply", () =>
      server.stdout.find((l) => /^client \d+ replied: /.test(l) && l.includes(`Command '${pushed}' processed successfully.`)),
    );
    const reply = JSON.parse(line.replace(/^client \d+ replied: /, ""));
    if (reply.success !== true || reply.command !== "" || String(reply.requestID) !== id) {
      throw new Error(`unexpected reply ${line}`);
    }
    return line;
  });

  await check("status panel shows >= 1 client, uptime and a message rate", async () => {
    await until("#clients >= 1 and a rate", async () => {
      const clients = Number(await page.textContent("#clients"));
      const rate = Number(await page.textContent("#rate"));
      return clients >= 1 && Number.isFinite(rate);
    });
    const c = await page.textContent("#clients");
    const r = await page.textContent("#rate");
    const u = await page.textContent("#uptime");
    if (!/^\d+s$|\d+m \d+s$/.test(u)) throw new Error(`uptime shows ${u}`);
    return `clients ${c}, ${r} msg/s, uptime ${u}`;
  });

  await check("server killed (SIGKILL): page shows reconnecting", async () => {
    await kill(server);
    await page.waitForSelector('#state[data-state="reconnecting"]', { timeout: WAIT_MS });
    const text = await page.textContent("#state");
    if (!/^reconnecting in \d+(\.\d)? s/.test(text)) throw new Error(`state reads ${JSON.stringify(text)}`);
    return text;
  });

  await check("server restarted on the same port: page is open again by itself", async () => {
    server = await until("the port to be free again", async () => {
      try {
        return await startServer(port);
      } catch {
        return null;
      }
    });
    await page.waitForSelector('#state[data-state="open"]', { timeout: 20_000 });
    const events = await page.locator("#log .event").allTextContents();
    if (!events.some((e) => e.includes("closed 1006"))) throw new Error(`no close event in log: ${events}`);
    return `${events.filter((e) => e.includes("connected to")).length} connects logged`;
  });

  const cmd3 = "Eject the hot dog 3.";
  await check("after reconnecting a new command round-trips", async () => {
    const id = await sendFromPage(page, cmd3);
    return await expectReply(page, id, cmd3);
  });

  await check("status panel follows the restarted server", async () => {
    await until("#clients >= 1 with a fresh uptime", async () => {
      const clients = Number(await page.textContent("#clients"));
      const u = await page.textContent("#uptime");
      return clients >= 1 && /^\d+s$/.test(u);
    });
    return `clients ${await page.textContent("#clients")}, uptime ${await page.textContent("#uptime")}`;
  });

  await check(`screenshot saved to target/console.png`, async () => {
    const rows = await page.locator("#log li").count();
    if (rows < 6) throw new Error(`only ${rows} log rows`);
    await page.screenshot({ path: SCREENSHOT, timeout: WAIT_MS });
    return `${rows} log rows`;
  });

  await check("?token= from the page URL is passed to /server; Disconnect/Connect button", async () => {
    const tport = await freePort();
    await startServer(tport, { WSLOOP_TOKEN: "s3cret&x" });
    const tpage = await context.newPage();
    tpage.on("pageerror", (err) => pageErrors.push(String(err)));
    await tpage.goto(`http://127.0.0.1:${tport}/?token=${encodeURIComponent("s3cret&x")}`, { timeout: WAIT_MS });
    await tpage.waitForSelector('#state[data-state="open"]', { timeout: WAIT_MS });
    const id = await sendFromPage(tpage, "with token");
    const r = await expectReply(tpage, id, "with token");
    // The Disconnect button closes with 1000 and stays closed; Connect reopens.
    await tpage.click("#toggle");
    await tpage.waitForSelector('#state[data-state="closed"]', { timeout: WAIT_MS });
    const closed = await tpage.textContent("#state");
    if (closed !== "closed 1000 (closed by you)") throw new Error(`after Disconnect the state reads ${JSON.stringify(closed)}`);
    if (!(await tpage.isDisabled("#send"))) throw new Error("Send is enabled while closed");
    await tpage.click("#toggle");
    await tpage.waitForSelector('#state[data-state="open"]', { timeout: WAIT_MS });
    // And without the token the upgrade is refused: the page keeps retrying.
    await tpage.goto(`http://127.0.0.1:${tport}/`, { timeout: WAIT_MS });
    await tpage.waitForSelector('#state[data-state="reconnecting"]', { timeout: WAIT_MS });
    await tpage.close();
    return `${r}; Disconnect shows "${closed}", Connect reopens; refused without the token`;
  });

  await check("https:// with the test CA trusted: the page connects over wss:// and round-trips", async () => {
    certDir = mkdtempSync(join(tmpdir(), "wsloop-browser-tls-"));
    const tls = makeCerts(certDir);
    const sport = await freePort();
    await startServer(sport, {}, ["--cert", tls.cert, "--key", tls.key]);
    // A browser of its own: the trust store is read at start.
    const tlsContext = await launch(join(certDir, "profile"), tls);
    try {
      const spage = tlsContext.pages()[0] || (await tlsContext.newPage());
      spage.setDefaultTimeout(WAIT_MS);
      spage.on("pageerror", (err) => pageErrors.push(String(err)));
      const sockets = [];
      spage.on("websocket", (ws) => sockets.push(ws.url()));
      const resp = await spage.goto(`https://127.0.0.1:${sport}/`, { timeout: WAIT_MS });
      if (resp.status() !== 200) throw new Error(`GET / over https answered ${resp.status()}`);
      const security = await resp.securityDetails();
      await spage.waitForSelector('#state[data-state="open"]', { timeout: WAIT_MS });
      const want = `wss://127.0.0.1:${sport}/server`;
      if (!sockets.some((u) => u.startsWith(want))) throw new Error(`WebSocket URLs ${JSON.stringify(sockets)}, want ${want}`);
      const id = await sendFromPage(spage, "over TLS");
      const r = await expectReply(spage, id, "over TLS");
      const proto = security ? security.protocol : "?";
      return `${proto}, CA trusted via ${tls.trust}; ${sockets[0]}; ${r}`;
    } finally {
      await tlsContext.close().catch(() => {});
    }
  });

  await check("Devices panel: refuses without/with a wrong operator token, lists a named device, commands it", async () => {
    opsDir = mkdtempSync(join(tmpdir(), "wsloop-browser-ops-"));
    const opToken = "op-browser-s3cret";
    const files = { operator: opToken, tokens: "pump-1 pump-1-secret\n", device: "pump-1-secret" };
    for (const [name, text] of Object.entries(files)) writeFileSync(join(opsDir, name), text);
    const oport = await freePort();
    await startServer(oport, {}, ["--operator-token-file", join(opsDir, "operator"), "--tokens", join(opsDir, "tokens")]);
    let device = startDevice(oport, "pump-1", join(opsDir, "device"));
    const opage = await context.newPage();
    opage.setDefaultTimeout(WAIT_MS);
    opage.on("pageerror", (err) => pageErrors.push(String(err)));
    await opage.goto(`http://127.0.0.1:${oport}/`, { timeout: WAIT_MS });
    const say = () => opage.textContent("#opstate");
    const devices = opage.locator("#devices li");
    await until("the page to say it has no operator token", async () => (await say()).includes("no operator token"));
    if (await devices.count()) throw new Error("devices listed without a token");
    const useToken = async (token) => {
      await opage.fill("#optoken", token);
      await opage.click("#opform button");
    };
    await useToken("not-the-token");
    await until("the page to say the token is wrong", async () => /403.*wrong operator token/.test(await say()));
    const wrong = await say();
    if (await devices.count()) throw new Error("devices listed with a wrong token");

    await useToken(opToken);
    const item = opage.locator('#devices li[data-name="pump-1"]');
    await until("pump-1 listed online", async () => (await item.count()) === 1 && (await item.getAttribute("class")) === "on");
    // The token is kept in this tab only: sessionStorage, not localStorage or a cookie.
    const kept = await opage.evaluate(() => [sessionStorage.getItem("wsloop-operator"), localStorage.length, document.cookie]);
    if (kept[0] !== opToken || kept[1] !== 0 || kept[2] !== "") throw new Error(`token kept as ${JSON.stringify(kept)}`);

    // A command whose text is markup; the device echoes it in its reply.
    const cmd = `<img src=x onerror="window.pwned=1"><b>Eject</b> & "dog"`;
    const sendTo = async (text) => {
      await opage.selectOption("#dev", "pump-1");
      await opage.fill("#devcmd", text);
      await opage.click("#devsend");
      return opage.locator("#devlog li").first();
    };
    const row = await sendTo(cmd);
    await until("the command's record to end replied", async () => (await row.getAttribute("data-status")) === "replied");
    const reply = await row.locator(".msg").textContent();
    const want = `Command '${cmd}' processed successfully.`;
    if (reply !== want) throw new Error(`reply shows ${JSON.stringify(reply)}, want ${JSON.stringify(want)}`);
    if ((await row.locator(".cmd").textContent()) !== cmd) throw new Error("the command is not shown as sent");
    if (await opage.locator("#ops img, #ops b").count()) throw new Error("peer text became elements");
    if (await opage.evaluate(() => window.pwned)) throw new Error("peer text ran as script");
    const id = await row.getAttribute("data-request-id");
    // Long peer text wraps inside the panel: the page does not grow sideways.
    const widths = await opage.evaluate(() => [document.documentElement.scrollWidth, innerWidth]);
    if (widths[0] > widths[1]) throw new Error(`the page is ${widths[0]} px wide in a ${widths[1]} px window`);

    // The device goes away: the list follows; a command waits as queued,
    // and ends replied once the device is back.
    await kill(device);
    await until("pump-1 listed offline", async () => (await item.getAttribute("class")) === "off");
    const later = await sendTo("while away");
    await until("the command to show queued", async () => (await later.getAttribute("data-status")) === "queued");
    device = startDevice(oport, "pump-1", join(opsDir, "device"));
    await until("the queued command to end replied", async () => (await later.getAttribute("data-status")) === "replied", 20_000);
    await until("pump-1 listed online again", async () => (await item.getAttribute("class")) === "on");
    await opage.screenshot({ path: join(ROOT, "target/console-devices.png"), timeout: WAIT_MS });
    await opage.close();
    return `${wrong}; #${id} replied: ${reply.slice(0, 40)}…; offline, queued, then replied`;
  });

  await check("no uncaught errors in the page", async () => {
    if (pageErrors.length) throw new Error(pageErrors.join("; "));
  });
}

// Whatever ends this process, no server and no profile directory outlive it.
process.on("exit", () => {
  for (const s of servers) {
    try {
      s.child.kill("SIGKILL");
    } catch {}
  }
  if (profile) rmSync(profile, { recursive: true, force: true });
  if (certDir) rmSync(certDir, { recursive: true, force: true });
  if (opsDir) rmSync(opsDir, { recursive: true, force: true });
});
process.stdout.on("error", () => {}); // e.g. piped into `head`

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    console.log(`FAIL interrupted by ${signal}`);
    await cleanup();
    process.exit(1);
  });
}

const deadline = setTimeout(async () => {
  results.push([`whole test within ${TOTAL_TIMEOUT_MS / 1000} s`, false, "timed out"]);
  console.log(`FAIL the test did not finish within ${TOTAL_TIMEOUT_MS / 1000} s`);
  await cleanup();
  summary();
  process.exit(1);
}, TOTAL_TIMEOUT_MS);

let code = 0;
try {
  await main();
} catch (err) {
  if (!(err instanceof CheckFailed)) {
    results.push(["test harness", false, String(err && err.stack ? err.stack : err)]);
    console.log(`FAIL test harness: ${err && err.stack ? err.stack : err}`);
  }
  for (const s of servers) if (s.stderr.trim()) console.log(`server stderr (port ${s.port}):\n${s.stderr.trim()}`);
  code = 1;
}
clearTimeout(deadline);
await cleanup();
if (summary() > 0) code = 1;
process.exit(code);
