// The usage page: reads the signed-in user's counters from the tally API and records
// sessions. The API address and token come from the address's fragment
// (#api=…&token=…, never sent to the page's server) or from the form.
const params = new URLSearchParams(location.hash.slice(1));
let api = params.get("api");
let token = params.get("token");
let user = params.get("user");
let startedId = null;

const $ = (id) => document.getElementById(id);

// The user id is the token's `sub` unless the address names another (user=…).
function tokenSubject(jwt) {
  try {
    const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub;
  } catch {
    return null;
  }
}

async function call(method, path, body) {
  const response = await fetch(api + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  // Readable only because the API exposes it to other origins (CORS).
  $("request-id").textContent = response.headers.get("x-request-id") ?? "-";
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data?.error?.message ?? `the service answered ${response.status}`;
    throw Object.assign(new Error(message), { code: data?.error?.code ?? "unknown" });
  }
  return { data, location: response.headers.get("location") };
}

function notice(text, kind) {
  const box = $("notice");
  box.textContent = text;
  box.className = kind;
}

function showCounter(id, counter) {
  const left = $(id).querySelector(".left");
  const bar = $(id).querySelector(".bar");
  if (counter.limit === null) {
    left.textContent = `${counter.used} used · unlimited`;
    bar.firstElementChild.style.width = "0%";
    bar.classList.remove("full");
    return;
  }
  left.textContent = `${counter.remaining} of ${counter.limit} left`;
  const used = counter.limit === 0 ? 100 : (100 * (counter.limit - counter.remaining)) / counter.limit;
  bar.firstElementChild.style.width = `${Math.min(100, used)}%`;
  bar.classList.toggle("full", counter.remaining === 0);
}

function showUsage(usage) {
  showCounter("practice_sessions", usage.practice_sessions);
  showCounter("assessments", usage.assessments);
  $("period").textContent = `This period ends ${new Date(usage.period_end).toLocaleString()}.`;
  const plans = $("plans");
  plans.replaceChildren(
    ...usage.learning_plans.map((plan) => {
      const item = document.createElement("li");
      const total = plan.total_sessions;
      item.innerHTML = `<div class="label"></div><div class="bar"><span></span></div>`;
      item.querySelector(".label").textContent =
        `${plan.title || "Learning plan"}: ${plan.completed_sessions}${total ? ` of ${total}` : ""} sessions done`;
      item.querySelector(".bar > span").style.width = total ? `${Math.min(100, (100 * plan.completed_sessions) / total)}%` : "0%";
      return item;
    }),
  );
  if (plans.children.length === 0) {
    plans.innerHTML = '<li class="muted">No learning plans yet.</li>';
  }
}

async function refresh() {
  const { data } = await call("GET", `/v1/users/${encodeURIComponent(user)}/usage`);
  showUsage(data);
}

async function act(work, done) {
  for (const button of document.querySelectorAll("#usage button")) button.disabled = true;
  try {
    await work();
    notice(done, "ok");
  } catch (error) {
    notice(error.code === "quota_exceeded" ? `Limit reached: ${error.message}` : `Not recorded: ${error.message}`, "error");
  } finally {
    for (const button of document.querySelectorAll("#usage button")) button.disabled = false;
    $("complete").disabled = startedId === null;
  }
}

async function record(kind, label) {
  await act(async () => {
    const { data } = await call("POST", "/v1/sessions", { kind });
    showUsage(data.usage);
  }, `${label} recorded.`);
}

$("record-practice").onclick = () => record("practice", "Practice session");
$("record-assessment").onclick = () => record("assessment", "Assessment");
$("start").onclick = () =>
  act(async () => {
    const { data } = await call("POST", "/v1/sessions", { kind: "practice", status: "started" });
    startedId = data.session.session_id;
    $("started").textContent = "in progress: its slot is held";
    showUsage(data.usage);
  }, "Session started.");
$("complete").onclick = () =>
  act(async () => {
    const { data } = await call("PATCH", `/v1/sessions/${startedId}`, { status: "completed" });
    startedId = null;
    $("started").textContent = "";
    showUsage(data.usage);
  }, "Session completed.");

$("connect").onsubmit = (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  location.hash = new URLSearchParams({ api: form.get("api"), token: form.get("token") }).toString();
  location.reload();
};

async function start() {
  user = user ?? (token ? tokenSubject(token) : null);
  if (!api || !token || !user) {
    $("connect").hidden = false;
    return;
  }
  api = api.replace(/\/$/, "");
  $("who").textContent = `Signed in as ${user}.`;
  $("usage").hidden = false;
  try {
    await refresh();
  } catch (error) {
    notice(`Cannot read your usage: ${error.message}`, "error");
  }
  document.body.dataset.ready = "true";
}

start();
