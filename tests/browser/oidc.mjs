// Plays an analyst who signs in through the OpenID provider, in real
// headless Chromium, for tests/oidc_browser.rs.
//
// The Rust test starts the provider, the gateway and an upstream, and plays
// the agent. This script opens the dashboard, takes the provider's sign-in
// button, signs in on the provider's login page, lands back on the
// dashboard with the approver role, approves the held request, and signs
// out through the provider's end-session page. It talks to the test
// through stdout, one line per step:
//
//   READY    signed in, live stream connected: send the agent request
//   DECIDED  the request is approved: check what the upstream received
//   DONE     signed out here and at the provider; all checks passed
//
// Any failed check throws; the script then exits non-zero with the reason
// on stderr.
//
// Environment: MIDOSOC_REVIEW_URL, MIDOSOC_PROVIDER_URL, MIDOSOC_ACCOUNT
// (the name typed on the provider's login page), MIDOSOC_CHROMIUM (the
// browser executable).

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

const REVIEW_URL = need("MIDOSOC_REVIEW_URL");
const PROVIDER_URL = need("MIDOSOC_PROVIDER_URL");
const ACCOUNT = need("MIDOSOC_ACCOUNT");
const BROWSER = need("MIDOSOC_CHROMIUM");

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
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: BROWSER,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 800 },
    timezoneId: "UTC",
    locale: "en-GB",
  });
  context.setDefaultTimeout(STEP_TIMEOUT);
  // The provider's development pages import a web font; nothing may leave
  // the machine.
  await context.route(
    (url) => url.hostname !== "127.0.0.1",
    (route) => route.abort(),
  );

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
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));

  // The dashboard offers the provider's sign-in beside the token form.
  await page.goto(REVIEW_URL);
  await page.locator("#signin-form").waitFor();
  const sso = page.locator("#sso-link");
  await sso.waitFor();
  check(/the test provider/.test(await sso.textContent()), "sign-in button names the provider");

  // Off to the provider, with PKCE, state and nonce in the request.
  await Promise.all([page.waitForURL((url) => url.href.startsWith(PROVIDER_URL)), sso.click()]);
  const login = page.locator('input[name="login"]');
  await login.waitFor();

  // The pre-login cookie is set, HttpOnly and Lax, and scripts cannot read
  // it.
  const before = await context.cookies(REVIEW_URL);
  const pre = before.find((c) => c.name.endsWith("midosoc_login"));
  check(pre && pre.httpOnly && pre.sameSite === "Lax", "pre-login cookie attributes");

  await login.fill(ACCOUNT);
  await page.fill('input[name="password"]', "any password");
  await page.click('button[type="submit"]');
  // The provider asks for consent the first time.
  await page.locator("button.login-submit").waitFor();
  await Promise.all([
    page.waitForURL((url) => url.href.startsWith(REVIEW_URL)),
    page.click("button.login-submit"),
  ]);

  // Back on the dashboard, signed in with the mapped role.
  await page.locator("#app-view").waitFor();
  check((await page.textContent("#who-name")) === ACCOUNT, "analyst name from the ID token");
  check((await page.textContent("#who-role")) === "approver", "role from the roles claim");
  await page.locator('#live[data-state="live"]').waitFor();

  const after = await context.cookies(REVIEW_URL);
  const session = after.find((c) => c.name.endsWith("midosoc_session"));
  check(session && session.httpOnly && session.sameSite === "Lax", "session cookie attributes");
  check(!after.some((c) => c.name.endsWith("midosoc_login")), "pre-login cookie cleared");
  check(!(await page.evaluate(() => document.cookie)).includes("midosoc"), "cookies readable");

  say("READY");

  // The held request arrives live; the analyst approves it.
  const item = page.locator("#queue-list .queue-item").first();
  await item.waitFor();
  await item.click();
  await page.locator("#d-url", { hasText: "items/7" }).waitFor();
  await page.fill("#reason", "Checked with the owner of the items.");
  await page.click("#approve");
  await page.locator("#queue-list .queue-item", { hasText: "items/7" }).waitFor({ state: "detached" });

  // History names the analyst as the provider named them.
  await page.click("#tab-history");
  await page.locator("#queue-list .queue-item", { hasText: "items/7" }).click();
  await page.locator("#d-decision-line", { hasText: `Approved by ${ACCOUNT}` }).waitFor();

  say("DECIDED");

  // Signing out ends the session at the provider too, and comes back.
  await Promise.all([
    page.waitForURL((url) => url.href.startsWith(PROVIDER_URL)),
    page.click("#sign-out"),
  ]);
  await Promise.all([
    page.waitForURL((url) => url.href.startsWith(REVIEW_URL)),
    page.click('button[name="logout"][value="yes"]'),
  ]);
  await page.locator("#signin-form").waitFor();
  check(!(await page.locator("#app-view").isVisible()), "still signed in after sign-out");
  const status = await page.evaluate(async () => (await fetch("/api/session")).status);
  check(status === 401, `session still answers ${status} after sign-out`);

  check(problems.length === 0, problems.join("\n"));
  say("DONE");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
