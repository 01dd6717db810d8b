// Loads the admin dashboard in Debian's Chromium and follows what it shows while the
// test sends traffic and takes a server down.
//
//   node tests/browser/dashboard.mjs DASHBOARD_URL UPSTREAM SERVER
//
// UPSTREAM is an [upstream.NAME] and SERVER the `server` field of one of its servers in
// GET /status. CHROMIUM overrides /usr/bin/chromium. Prints, one line each, on stdout:
//
//   moving   requests-total rose between two reads and requests-rate is above 0 (within 15 s)
//   down     that server's row has a data-state starting with "down" and shows "DOWN"
//            (within 10 s of `moving`); the page is also checked at 375 px wide: no
//            horizontal overflow and the row's text visible. Then exits 0.
//
// Anything else (the page does not load, a console error, an uncaught exception, a
// timeout, a failed check) prints one line `failed: …` and exits 1. Screenshots are
// written only when DASHBOARD_SCREENSHOT_DIR is set.
import { chromium } from "playwright-core";
import { join } from "node:path";

const [url, upstream, server] = process.argv.slice(2);
const shots = process.env.DASHBOARD_SCREENSHOT_DIR;

function say(line) {
  return new Promise((resolve) => process.stdout.write(line + "\n", resolve));
}
if (!url || !upstream || !server) {
  await say("failed: usage: node tests/browser/dashboard.mjs DASHBOARD_URL UPSTREAM SERVER");
  process.exit(1);
}
// Every wait below is bounded; this only catches a hang outside them.
const watchdog = setTimeout(async () => {
  await say("failed: no result within 90 s");
  process.exit(1);
}, 90000);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  timeout: 15000,
});

// The first console error or page exception ends the run.
let pageProblem = null;
function check() {
  if (pageProblem) throw new Error(pageProblem);
}

async function shot(page, name) {
  if (shots) await page.screenshot({ path: join(shots, `dashboard-${name}.png`), fullPage: true });
}

// Polls fn (in Node) every 200 ms until it returns a truthy value; throws what
// describe() says when ms pass first.
async function until(ms, fn, describe) {
  const end = Date.now() + ms;
  for (;;) {
    check();
    const value = await fn();
    if (value) return value;
    if (Date.now() > end) throw new Error(await describe());
    await new Promise((r) => setTimeout(r, 200));
  }
}

// A number shown by data-testid: its data-value when it has one, else its digits.
function readNumber(page, testid) {
  return page.evaluate((id) => {
    const e = document.querySelector(`[data-testid="${id}"]`);
    if (!e) return { missing: true };
    const raw = e.getAttribute("data-value");
    const text = e.textContent.trim();
    let value = raw !== null && raw !== "" ? Number(raw) : Number(text.replace(/[^0-9.]/g, ""));
    if (!/[0-9]/.test(text)) value = NaN;
    return { value: Number.isFinite(value) ? value : null, text };
  }, testid);
}

// The row of the server under test, as the page shows it.
function readRow(page) {
  return page.evaluate(([up, srv]) => {
    const rows = [...document.querySelectorAll('[data-testid="server-row"]')];
    const row = rows.find((r) => r.getAttribute("data-upstream") === up && r.getAttribute("data-server") === srv);
    if (!row) {
      return { found: false, seen: rows.map((r) => `${r.getAttribute("data-upstream")}/${r.getAttribute("data-server")}`) };
    }
    const box = row.getBoundingClientRect();
    const visible = row.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true }) && box.width > 0 && box.height > 0;
    return {
      found: true,
      state: row.getAttribute("data-state"),
      text: row.innerText.replace(/\s+/g, " ").trim(),
      visible,
      left: box.left,
      right: box.right,
    };
  }, [upstream, server]);
}

let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error" && !pageProblem) pageProblem = `console error: ${msg.text().replace(/\s+/g, " ")}`;
  });
  page.on("pageerror", (err) => {
    if (!pageProblem) pageProblem = `uncaught exception in the page: ${err.message.replace(/\s+/g, " ")}`;
  });
  page.on("crash", () => {
    if (!pageProblem) pageProblem = "the page crashed";
  });

  const response = await page.goto(url, { timeout: 10000, waitUntil: "load" });
  if (!response) throw new Error(`no response for ${url}`);
  if (!response.ok()) throw new Error(`${url} answered ${response.status()}`);
  const type = response.headers()["content-type"] || "";
  if (!type.startsWith("text/html")) throw new Error(`${url} is ${type || "untyped"}, not text/html`);
  check();

  // Live traffic: the total goes up between two reads and the rate is above 0.
  let first = null;
  let last = { total: null, rate: null };
  await until(
    15000,
    async () => {
      const total = await readNumber(page, "requests-total");
      const rate = await readNumber(page, "requests-rate");
      if (total.missing) throw new Error('the page has no data-testid="requests-total"');
      if (rate.missing) throw new Error('the page has no data-testid="requests-rate"');
      last = { total: total.text, rate: rate.text };
      if (total.value === null) return false;
      if (first === null || total.value < first) first = total.value;
      return total.value > first && rate.value !== null && rate.value > 0;
    },
    () => `requests not moving within 15 s: requests-total ${JSON.stringify(last.total)} (first ${first}), requests-rate ${JSON.stringify(last.rate)}`,
  );
  await shot(page, "moving");
  await say("moving");

  // The server goes down: its row says so, in its state attribute and in its text.
  let row = null;
  await until(
    10000,
    async () => {
      row = await readRow(page);
      return row.found && typeof row.state === "string" && row.state.startsWith("down") && row.text.includes("DOWN");
    },
    () =>
      !row || !row.found
        ? `no server row for upstream ${JSON.stringify(upstream)} server ${JSON.stringify(server)}; rows: ${JSON.stringify(row ? row.seen : [])}`
        : `server ${JSON.stringify(server)} not shown down within 10 s: data-state ${JSON.stringify(row.state)}, text ${JSON.stringify(row.text)}`,
  );
  await shot(page, "down");

  // A phone: nothing wider than the screen, and the row still readable.
  await page.setViewportSize({ width: 375, height: 800 });
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  const phone = await page.evaluate(() => ({
    scrollWidth: document.scrollingElement.scrollWidth,
    innerWidth: window.innerWidth,
  }));
  if (phone.scrollWidth > phone.innerWidth) {
    throw new Error(`horizontal overflow at 375 px: scrollWidth ${phone.scrollWidth} > innerWidth ${phone.innerWidth}`);
  }
  await page.evaluate(([up, srv]) => {
    const row = [...document.querySelectorAll('[data-testid="server-row"]')].find(
      (r) => r.getAttribute("data-upstream") === up && r.getAttribute("data-server") === srv);
    if (row) row.scrollIntoView({ block: "center" });
  }, [upstream, server]);
  row = await readRow(page);
  await shot(page, "375");
  if (!row.found) throw new Error(`at 375 px the server row for ${JSON.stringify(server)} is gone`);
  if (!row.visible) throw new Error(`at 375 px the server row for ${JSON.stringify(server)} is not visible`);
  if (row.left < 0 || row.right > phone.innerWidth + 0.5) {
    throw new Error(`at 375 px the server row for ${JSON.stringify(server)} spans ${row.left}..${row.right} px, off the screen`);
  }
  if (!row.text.includes(server) || !row.text.includes("DOWN")) {
    throw new Error(`at 375 px the server row does not show ${JSON.stringify(server)} and DOWN: ${JSON.stringify(row.text)}`);
  }
  check();
  await say("down");
} catch (err) {
  if (page) await shot(page, "failed").catch(() => {});
  // one line: playwright appends a call log to its messages
  await say(`failed: ${(pageProblem || err.message || String(err)).split("\n")[0]}`);
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
