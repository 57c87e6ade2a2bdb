// Plays the analyst in real headless Chromium for tests/dashboard_browser.rs.
//
// The Rust test starts the gateway and plays the agent; this script signs
// in, waits for held requests to appear live, approves and denies them,
// and checks what the analyst sees. It talks to the test through stdout,
// one line per step:
//
//   READY        signed in, live stream connected: send the agent requests
//   DECIDED      every request decided: check what the agents got
//   STOP-SERVER  stop the gateway: the dashboard must show the drop
//   DONE         all checks passed
//
// Any failed check throws; the script then exits non-zero with the reason
// on stderr.
//
// Environment: MIDOSOC_REVIEW_URL, MIDOSOC_ANALYST_TOKEN, MIDOSOC_CHROMIUM
// (the browser executable), MIDOSOC_SCREENSHOT (where to save the picture).

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

const REVIEW_URL = need("MIDOSOC_REVIEW_URL");
const TOKEN = need("MIDOSOC_ANALYST_TOKEN");
const BROWSER = need("MIDOSOC_CHROMIUM");
const SCREENSHOT = need("MIDOSOC_SCREENSHOT");

// Flags that keep Chromium quiet on a closed network and from touching
// anything outside its fresh profile.
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
  "--disable-default-apps",
  "--disable-extensions",
];

const STEP_TIMEOUT = 30_000;

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function say(line) {
  process.stdout.write(line + "\n");
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function main() {
  const profile = await mkdtemp(join(tmpdir(), "midosoc-chromium-"));
  // A persistent context is how playwright takes an explicit, fresh
  // user-data directory.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: BROWSER,
    headless: true,
    args: FLAGS,
    viewport: { width: 1440, height: 900 },
    deviceScaleFactor: 1,
    timezoneId: "UTC",
    locale: "en-GB",
  });
  context.setDefaultTimeout(STEP_TIMEOUT);

  try {
    await run(context);
  } finally {
    await context.close();
    await rm(profile, { recursive: true, force: true });
  }
}

async function run(context) {
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on("console", (message) => {
    const text = message.text();
    if (/Content Security Policy|Refused to/i.test(text)) problems.push(text);
  });
  page.on("dialog", (dialog) => {
    problems.push(`unexpected dialog: ${dialog.message()}`);
    dialog.dismiss();
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));

  // The page arrives with the security headers.
  const response = await page.goto(REVIEW_URL);
  const headers = response.headers();
  check(response.status() === 200, `dashboard answered ${response.status()}`);
  check(/frame-ancestors 'none'/.test(headers["content-security-policy"] ?? ""), "no strict CSP");
  check(headers["x-content-type-options"] === "nosniff", "no nosniff");

  // Sign in: a wrong token is refused, the analyst token works.
  await page.locator("#signin-form").waitFor();
  await page.fill("#token", "mdsa_not-an-analyst-token");
  await page.click("#signin-form button[type=submit]");
  await page.locator("#signin-error").waitFor();
  await page.fill("#token", TOKEN);
  await page.click("#signin-form button[type=submit]");
  await page.locator("#app-view").waitFor();
  await page.locator('#live[data-state="live"]').waitFor();

  // The session cookie is HttpOnly: scripts cannot read it.
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name.endsWith("midosoc_session"));
  check(session && session.httpOnly && session.sameSite === "Lax", "session cookie attributes");
  check(!(await page.evaluate(() => document.cookie)).includes("midosoc_session"), "cookie readable");
  check((await page.locator("#queue-list .queue-item").count()) === 0, "queue not empty at start");

  say("READY");

  // The agent's requests appear live, without a reload.
  await page.waitForFunction(
    () => document.querySelectorAll("#queue-list .queue-item").length >= 3,
    null,
    { timeout: STEP_TIMEOUT },
  );
  check(
    (await page.getAttribute("#live", "data-state")) === "live",
    "requests arrived but the stream is not live",
  );
  check((await page.textContent("#pending-count")).trim() === "3", "pending count");

  // The forensic view of the refund.
  await item(page, "refunds").click();
  await page.locator("#d-url", { hasText: "refunds" }).waitFor();
  check((await page.textContent("#d-method")) === "POST", "method shown");
  check(/critical/i.test(await page.textContent("#d-risk")), "risk word shown");
  check((await page.textContent("#d-agent")) === "billing-bot", "agent shown");
  check((await page.textContent("#d-rationale")).length > 0, "rationale shown");
  check((await page.locator("#d-markers tr").count()) > 0, "markers shown");
  check(/ago$/.test(await page.textContent("#d-waited")), "waiting time shown");
  check(/^in /.test(await page.textContent("#d-expires")), "expiry shown");
  const body = await page.textContent("#d-body");
  check(body.includes("<redacted>") && !body.includes("sk_live"), "secret not redacted");

  // Agent-supplied markup is shown as text and never becomes elements.
  check(body.includes("<img src=x onerror=alert(1)>"), "markup not shown as text");
  check((await page.locator("#detail img, #queue-list img").count()) === 0, "markup rendered");

  await page.screenshot({ path: SCREENSHOT });

  // Deny with the keyboard: d, a reason is required, Enter.
  await page.keyboard.press("d");
  check(await page.evaluate(() => document.activeElement?.id === "reason"), "d focuses reason");
  await page.keyboard.press("Enter");
  await page.locator("#decide-error").waitFor();
  await page.keyboard.type("Refund is larger than the charge; ask billing first.");
  await page.keyboard.press("Enter");
  await gone(page, "refunds");

  // Approve with the button.
  await item(page, "cus_1").click();
  await page.locator("#d-url", { hasText: "cus_1" }).waitFor();
  await page.click("#approve");
  await gone(page, "cus_1");

  // Approve the last one with j/k and a.
  await page.keyboard.press("k");
  await page.locator("#d-url", { hasText: "revoke" }).waitFor();
  await page.keyboard.press("a");
  await gone(page, "revoke");
  check((await page.textContent("#pending-count")).trim() === "0", "queue not emptied");

  // History shows each outcome with analyst and reason.
  await page.keyboard.press("2");
  await page.waitForFunction(
    () => document.querySelectorAll("#queue-list .queue-item").length === 3,
  );
  await item(page, "refunds").click();
  await page.locator("#d-decision-line", { hasText: "Denied by alice" }).waitFor();
  check(
    (await page.textContent("#d-decision-reason")).includes("larger than the charge"),
    "denial reason in history",
  );

  say("DECIDED");

  // When the gateway goes away the dashboard says so.
  say("STOP-SERVER");
  await page.locator('#live[data-state="down"]').waitFor();
  check(await page.isVisible("#offline-note"), "offline note hidden");

  check(problems.length === 0, `browser reported: ${problems.join(" | ")}`);
  say("DONE");
}

function item(page, text) {
  return page.locator("#queue-list .queue-item", { hasText: text });
}

async function gone(page, text) {
  await item(page, text).waitFor({ state: "detached" });
}

main().catch((error) => {
  process.stderr.write(`dashboard test failed: ${error.stack ?? error}\n`);
  process.exit(1);
});
