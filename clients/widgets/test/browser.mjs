// Drives headless Chromium (Debian's, through playwright-core) through one scenario against pages the Rust
// end-to-end test serves (tests/e2e/widgets.rs); prints one JSON line with what it saw and exits non-zero when an
// expectation fails. Usage: node test/browser.mjs <scenario>, settings in the environment (see `env` below).
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import path from "node:path";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const scenario = process.argv[2];
const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const logs = [];

async function open(url) {
  const page = await browser.newPage({ viewport: { width: 720, height: 900 }, deviceScaleFactor: 2 });
  page.on("console", (m) => logs.push(`[console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`[pageerror] ${e.message}`));
  await page.goto(url);
  return page;
}

async function screenshot(page, selector, name) {
  const dir = process.env.SCREENSHOT_DIR;
  if (!dir) return;
  await page.locator(selector).screenshot({ path: path.join(dir, `${name}.png`) });
}

/** The meter of the page's `<tollgate-usage>`: its ARIA values and the numbers it shows. */
async function meter(page) {
  return page.evaluate(() => {
    const root = document.querySelector("tollgate-usage")?.shadowRoot;
    const m = root?.querySelector("[role=meter]");
    if (!m) return null;
    return {
      now: Number(m.getAttribute("aria-valuenow")),
      max: Number(m.getAttribute("aria-valuemax")),
      min: Number(m.getAttribute("aria-valuemin")),
      text: m.getAttribute("aria-valuetext"),
      used: root.querySelector("[data-used]")?.textContent?.trim(),
      included: root.querySelector("[data-included]")?.textContent?.trim(),
    };
  });
}

const scenarios = {
  // <tollgate-usage> on an allowed origin; 25 proxied requests move its meter by exactly 25.
  async usage() {
    const page = await open(env("PAGE_URL"));
    await page.locator("tollgate-usage [role=meter]").waitFor({ timeout: 15_000 });
    const before = await meter(page);
    assert.ok(before, "a meter");
    assert.equal(before.min, 0);
    assert.equal(before.now.toLocaleString("en-US"), before.used.replace(/[^\d,]/g, ""));
    const proxy = env("PROXY_URL");
    for (let i = 0; i < 25; i++) {
      const r = await fetch(`${proxy}/v1/items`, { headers: { "x-api-key": env("API_KEY") } });
      assert.equal(r.status, 200, `proxied request ${i}`);
    }
    const target = before.now + 25;
    await page.waitForFunction(
      (n) =>
        document.querySelector("tollgate-usage")?.shadowRoot?.querySelector("[role=meter]")?.getAttribute(
          "aria-valuenow",
        ) === String(n),
      target,
      { timeout: 20_000 },
    );
    const after = await meter(page);
    assert.equal(after.now, before.now + 25, "exactly 25 more");
    assert.equal(Number(after.used.replace(/\D/g, "")), before.now + 25, "the number shown");
    assert.ok(after.max >= after.now, "aria-valuemax bounds aria-valuenow");
    await screenshot(page, "tollgate-usage", "usage");
    return { before, after };
  },

  // A page on an origin the control plane does not allow: the browser refuses the page the answers.
  async blocked() {
    const page = await open(env("BLOCKED_URL"));
    const outcome = await page.evaluate(async ({ cp, token }) => {
      const attempt = async (init, url) => {
        try {
          const r = await fetch(url, init);
          return { status: r.status, body: await r.text() };
        } catch (e) {
          return { rejected: String(e) };
        }
      };
      return {
        // Needs a preflight (Authorization): refused before the real request.
        withToken: await attempt({ headers: { Authorization: `Bearer ${token}` } }, `${cp}/api/me/entitlements.read`),
        // A simple request: it reaches the control plane, which answers; the browser withholds the answer.
        simple: await attempt({}, `${cp}/api/diag/smoke`),
      };
    }, { cp: env("CP_URL"), token: env("SESSION_TOKEN") });
    for (const [name, o] of Object.entries(outcome)) {
      assert.ok(o.rejected, `${name}: the browser handed the page a response: ${JSON.stringify(o)}`);
      assert.equal(o.status, undefined, `${name}: no response data`);
    }
    // The widget shows its error state, readable.
    const alert = page.locator("tollgate-usage [role=alert]");
    await alert.waitFor({ timeout: 15_000 });
    const message = await alert.textContent();
    assert.match(message, /unavailable/i);
    await screenshot(page, "tollgate-usage", "usage-error");
    // The same simple request from the allowed origin is answered.
    const allowed = await open(env("PAGE_URL"));
    const control = await allowed.evaluate(async (cp) => {
      const r = await fetch(`${cp}/api/diag/smoke`);
      return { status: r.status, body: await r.json() };
    }, env("CP_URL"));
    assert.equal(control.status, 200);
    assert.equal(control.body.ok, true);
    return { outcome, message: message.trim(), control: control.status };
  },

  // <tollgate-invoices> lists what invoices.list returned, each linking to its hosted page.
  async invoices() {
    const page = await open(env("PAGE_URL"));
    const expected = JSON.parse(env("EXPECT_INVOICES"));
    await page.locator("tollgate-invoices table, tollgate-invoices .muted:not([role=status])").first().waitFor({
      timeout: 15_000,
    });
    const rows = await page.evaluate(() =>
      [...(document.querySelector("tollgate-invoices")?.shadowRoot?.querySelectorAll("tr[data-invoice-id]") ?? [])].map(
        (row) => ({
          id: row.getAttribute("data-invoice-id"),
          url: row.querySelector("a")?.getAttribute("href") ?? null,
          status: row.querySelector(".status")?.textContent?.trim(),
        }),
      ),
    );
    assert.deepEqual(
      rows.map((r) => r.id),
      expected.map((i) => i.id),
      "the invoices, in the endpoint's order",
    );
    assert.deepEqual(
      rows.map((r) => r.url),
      expected.map((i) => i.url ?? null),
      "each links to its hosted page",
    );
    assert.deepEqual(
      rows.map((r) => r.status),
      expected.map((i) => i.status),
    );
    await screenshot(page, "tollgate-invoices", "invoices");
    return { rows };
  },

  // <tollgate-plan-picker>: the preview shown before confirming, then the upgrade; the test compares the preview
  // with the invoice Stripe made.
  async picker() {
    const page = await open(env("PAGE_URL"));
    const picker = page.locator("tollgate-plan-picker");
    await picker.locator("[data-current]").waitFor({ timeout: 15_000 });
    const before = (await picker.locator("[data-current]").textContent()).trim();
    const plan = env("UPGRADE_TO");
    await picker.locator(`button[data-plan="${plan}"]`).click();
    const preview = picker.locator(".preview");
    await preview.waitFor({ timeout: 15_000 });
    const amount = Number(await preview.getAttribute("data-amount"));
    const due = (await preview.locator("[data-due]").textContent()).trim();
    await screenshot(page, "tollgate-plan-picker", "plan-picker");
    await preview.locator("button.primary").click();
    await picker.locator(".done").waitFor({ timeout: 20_000 });
    await page.waitForFunction(
      (p) =>
        document.querySelector("tollgate-plan-picker")?.shadowRoot?.querySelector("[data-current]")?.textContent?.trim() === p,
      plan,
      { timeout: 15_000 },
    );
    return { before, amount, due, after: plan };
  },

  // An upgrade whose payment needs 3-D Secure: the picker completes it with Stripe.js. Stripe.js is replaced by a
  // stand-in (this machine reaches no js.stripe.com) whose confirmCardPayment does what the customer passing 3-D
  // Secure does on the emulator: POST /_test/payment_intents/{id}/confirm.
  async picker3ds() {
    const calls = [];
    const page = await browser.newPage({ viewport: { width: 720, height: 900 } });
    page.on("console", (m) => logs.push(`[console.${m.type()}] ${m.text()}`));
    await page.exposeFunction("__emulatorConfirm", async (secret) => {
      calls.push(secret);
      const id = secret.split("_secret_")[0];
      const r = await fetch(`${env("STRIPE_URL")}/_test/payment_intents/${id}/confirm`, {
        method: "POST",
        headers: { Authorization: `Bearer ${env("STRIPE_KEY")}` },
      });
      return { ok: r.ok, id, body: await r.text() };
    });
    await page.route(/^https:\/\/js\.stripe\.com\//, (route) =>
      route.fulfill({
        contentType: "text/javascript",
        body: `window.Stripe = function (key) {
          return {
            confirmCardPayment: async (secret) => {
              const r = await window.__emulatorConfirm(secret);
              return r.ok ? { paymentIntent: { id: r.id, status: "succeeded" } } : { error: { message: r.body } };
            },
          };
        };
        window.Stripe.version = "endive";`,
      }),
    );
    await page.goto(env("PAGE_URL"));
    const picker = page.locator("tollgate-plan-picker");
    await picker.locator("[data-current]").waitFor({ timeout: 15_000 });
    const plan = env("UPGRADE_TO");
    await picker.locator(`button[data-plan="${plan}"]`).click();
    await picker.locator(".preview").waitFor({ timeout: 15_000 });
    await picker.locator(".preview button.primary").click();
    await picker.locator(".done").waitFor({ timeout: 60_000 });
    const current = (await picker.locator("[data-current]").textContent()).trim();
    assert.equal(calls.length, 1, "Stripe.js confirmed the payment once");
    assert.match(calls[0], /_secret_/);
    assert.equal(current, plan);
    return { current, confirmed: calls.length };
  },

  // The stack's demo page (./scripts/stack): every widget loaded, then a screenshot of the page for the README.
  async demo() {
    const page = await open(env("PAGE_URL"));
    await page.locator("tollgate-usage [role=meter]").waitFor({ timeout: 15_000 });
    await page.locator("tollgate-plan-picker [data-current]").waitFor({ timeout: 15_000 });
    await page.locator("tollgate-invoices table").waitFor({ timeout: 15_000 });
    const dir = process.env.SCREENSHOT_DIR;
    // The picture goes into the README: the demo key (local, but a key) is shortened in it.
    await page.evaluate(() => {
      for (const pre of document.querySelectorAll("pre")) {
        pre.textContent = pre.textContent.replace(/tg_[A-Za-z0-9]+/g, "tg_…");
      }
    });
    if (dir) await page.screenshot({ path: path.join(dir, "demo.png"), fullPage: true });
    return { meter: await meter(page) };
  },
};

let code = 0;
try {
  const fn = scenarios[scenario];
  if (!fn) throw new Error(`no scenario ${scenario}; one of ${Object.keys(scenarios).join(", ")}`);
  const result = await fn();
  console.log(JSON.stringify({ scenario, ok: true, result }));
} catch (e) {
  code = 1;
  console.log(JSON.stringify({ scenario, ok: false, error: String(e?.stack ?? e), logs }));
} finally {
  await browser.close();
}
process.exit(code);
