// Opens a page through sluice in Debian's Chromium and reports what the page saw.
//
//   node tests/browser/wss.mjs URL SPKI_SHA256_BASE64 HOST_RULES
//
// The page's own script opens a WebSocket back to where it came from and sets the
// document title once it has an echo (or an error). This script prints one line,
// `title: …`, and exits 0; or prints the failure and exits 1. Bounded: 20 s in all.
import { chromium } from "playwright-core";

const [url, spki, hostRules] = process.argv.slice(2);
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
    // Trust the test certificate by its key, as a pinned certificate would be trusted,
    // and send the test's host name to loopback.
    `--ignore-certificate-errors-spki-list=${spki}`,
    `--host-resolver-rules=${hostRules}`,
  ],
  timeout: 15000,
});
try {
  const page = await browser.newPage();
  await page.goto(url, { timeout: 10000 });
  await page.waitForFunction(() => document.title.startsWith("echo:") || document.title.startsWith("error:"), null, { timeout: 10000 });
  console.log(`title: ${await page.title()}`);
} catch (err) {
  console.log(`failed: ${err.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
