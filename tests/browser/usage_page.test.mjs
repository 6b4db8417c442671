// The usage page (web/) in headless Chromium, served from another origin than the
// API (tests/browser_test.sh starts both over a real PostgreSQL): it shows the
// counters as bars, records sessions until the plan's limit, shows the refusal's
// message, starts and completes a session, and reads headers the API exposes to
// other origins. Leaves a screenshot in target/usage-page.png.
import assert from "node:assert/strict";
import { test } from "node:test";
import puppeteer from "puppeteer-core";

const { PAGE_URL, API_URL, TOKEN, CORS_TOKEN, SCREENSHOT, CHROMIUM } = process.env;

test("the usage page records sessions until the limit and shows the refusal", async () => {
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 900, height: 900 });
    const failures = [];
    page.on("requestfailed", (r) => failures.push(`${r.url()}: ${r.failure()?.errorText}`));
    page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
    await page.goto(`${PAGE_URL}/#api=${encodeURIComponent(API_URL)}&token=${TOKEN}`);
    await page.waitForSelector("body[data-ready=true]", { timeout: 10_000 });
    const text = (selector) => page.$eval(selector, (e) => e.textContent.trim());
    const waitFor = (selector, expected) =>
      page.waitForFunction((s, t) => document.querySelector(s)?.textContent.includes(t), { timeout: 5_000 }, selector, expected);

    assert.equal(
      await page.$eval("#connect", (e) => getComputedStyle(e).display),
      "none",
      "the connect form is hidden once connected",
    );
    assert.equal(await text("[data-testid=practice-left]"), "3 of 3 left");
    assert.equal(await text("[data-testid=assessments-left]"), "1 of 1 left");
    assert.match(await text("#plans"), /Job interview English: 0 of 12 sessions done/);

    // Record until the limit; the bars follow.
    for (const left of ["2 of 3 left", "1 of 3 left"]) {
      await page.click("#record-practice");
      await waitFor("[data-testid=practice-left]", left);
    }
    // A started session holds the last slot...
    await page.click("#start");
    await waitFor("#started", "in progress");
    await waitFor("[data-testid=practice-left]", "0 of 3 left");
    // ...so another one is refused, with the API's message and no stack.
    await page.click("#record-practice");
    await waitFor("#notice", "Limit reached");
    const refusal = await text("#notice");
    assert.match(refusal, /quota exceeded: user "page_user" has used 2 of 3 practice_sessions/);
    assert.doesNotMatch(refusal, /at |Error:|stack|SQL/);
    // Completing the started session is never refused: its slot was held.
    await page.click("#complete");
    await waitFor("#notice", "Session completed.");
    assert.equal(await text("[data-testid=practice-left]"), "0 of 3 left");

    // The assessment's single slot.
    await page.click("#record-assessment");
    await waitFor("[data-testid=assessments-left]", "0 of 1 left");
    await page.click("#record-assessment");
    await waitFor("#notice", "Limit reached");

    // x-request-id is readable across origins only because the API exposes it.
    assert.match(await text("#request-id"), /^[0-9a-f-]{36}$/);
    // Full bars: both counters at their limit.
    const widths = await page.$$eval(".counter .bar > span", (bars) => bars.map((b) => b.style.width));
    assert.deepEqual(widths, ["100%", "100%"]);
    assert.deepEqual(failures, []);
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  } finally {
    await browser.close();
  }
});

test("CORS: the API answers the page's preflights and exposes Location", async () => {
  const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox", "--disable-gpu"] });
  try {
    const page = await browser.newPage();
    await page.goto(`${PAGE_URL}/`);
    const seen = await page.evaluate(async (api, token) => {
      const auth = { Authorization: `Bearer ${token}` };
      const post = await fetch(`${api}/v1/sessions`, {
        method: "POST",
        headers: { ...auth, "Content-Type": "application/json" },
        body: JSON.stringify({ kind: "practice", status: "started" }),
      });
      const location = post.headers.get("location");
      const body = await post.json();
      const patch = await fetch(`${api}/v1/sessions/${body.session?.session_id}`, {
        method: "PATCH",
        headers: { ...auth, "Content-Type": "application/json" },
        body: JSON.stringify({ status: "abandoned" }),
      });
      const get = await fetch(`${api}/v1/sessions/${body.session?.session_id}`, { headers: auth });
      return { post: post.status, location, patch: patch.status, get: get.status, requestId: get.headers.get("x-request-id") };
    }, API_URL, CORS_TOKEN);
    // Each call with Authorization (and JSON) is preflighted; the answers are readable.
    assert.equal(seen.post, 201, JSON.stringify(seen));
    assert.match(seen.location, /^\/v1\/sessions\//, "Location is exposed");
    assert.equal(seen.patch, 200);
    assert.equal(seen.get, 200);
    assert.ok(seen.requestId, "x-request-id is exposed");
  } finally {
    await browser.close();
  }
});
