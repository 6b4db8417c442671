// The client against the real API (tests/client_test.sh starts it over a real
// PostgreSQL with the extension): TALLY_URL, and tokens for a user whose plan allows
// 2 assessments a month (TALLY_TOKEN) and for another user (TALLY_OTHER_TOKEN).
import assert from "node:assert/strict";
import { test } from "node:test";
import { createTallyClient, isQuotaExceeded, type QuotaExceeded } from "../src/index.js";

const baseUrl = process.env.TALLY_URL ?? "";
const user = process.env.TALLY_USER ?? "";
const client = createTallyClient({ baseUrl, token: process.env.TALLY_TOKEN ?? "" });

test("records a session and reads the usage it moved", async () => {
  const recorded = await client.recordSession({ kind: "practice", duration_seconds: 600 });
  assert.ok(recorded.ok, JSON.stringify(recorded));
  assert.equal(recorded.status, 201);
  assert.equal(recorded.data.session.user_id, user);
  assert.equal(recorded.data.session.status, "completed");
  const used: number = recorded.data.usage.practice_sessions.used;
  assert.equal(used, 1);

  const usage = await client.getUsage(user);
  assert.ok(usage.ok);
  assert.deepEqual(usage.data.practice_sessions, recorded.data.usage.practice_sessions);

  const read = await client.getSession(recorded.data.session.session_id);
  assert.ok(read.ok);
  assert.deepEqual(read.data, recorded.data.session);
});

test("starts then completes a session", async () => {
  const started = await client.recordSession({ kind: "practice", status: "started" });
  assert.ok(started.ok);
  assert.equal(started.data.session.status, "started");
  const finished = await client.finishSession(started.data.session.session_id, { status: "completed", duration_seconds: 300 });
  assert.ok(finished.ok, JSON.stringify(finished));
  assert.equal(finished.data.session.status, "completed");
  const again = await client.finishSession(started.data.session.session_id, { status: "abandoned" });
  assert.ok(!again.ok);
  assert.equal(again.error.code, "invalid_transition");
});

test("the quota refusal is a typed value", async () => {
  let refusal: QuotaExceeded | undefined;
  for (let i = 0; i < 5 && refusal === undefined; i++) {
    const result = await client.recordSession({ kind: "assessment" });
    if (!result.ok) {
      assert.equal(result.status, 402);
      assert.ok(isQuotaExceeded(result.error), JSON.stringify(result.error));
      refusal = result.error;
    }
  }
  assert.ok(refusal, "the third assessment is refused");
  assert.equal(refusal.counter, "assessments");
  assert.equal(refusal.used, 2);
  assert.equal(refusal.limit, 2);
  assert.ok(!Number.isNaN(Date.parse(refusal.period_end)));
});

test("another user's data is forbidden, a bad token unauthorized", async () => {
  const other = await client.getUsage(process.env.TALLY_OTHER_USER ?? "");
  assert.ok(!other.ok);
  assert.equal(other.error.code, "forbidden");
  const stranger = createTallyClient({ baseUrl, token: "not-a-token" });
  const refused = await stranger.getUsage(user);
  assert.ok(!refused.ok);
  assert.equal(refused.status, 401);
  assert.equal(refused.error.code, "unauthorized");
});
