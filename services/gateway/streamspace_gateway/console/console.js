// The web console: log in, see my sessions as cards (live), create one with a name, drive it, open its
// viewer; administrators also get the admin area (admin.js). Everything goes through the public REST API.
import { ago, api, el, setToken, token } from "./api.js";
import { refreshAdmin, showAdmin } from "./admin.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const ADMIN_POLL_MS = 5000;
// noVNC is loaded only when there is a desktop to take a thumbnail of: the console works without it
const thumbnail = (...args) => import("./thumbs.js").then((module) => module.thumbnail(...args)).catch(() => {});

// The buttons each state offers (the API's verb rules, docs/sessions.md); nothing else is shown.
export const ACTIONS = {
  pending: ["delete"],
  starting: ["delete"],
  running: ["open", "hibernate", "stop", "delete"],
  hibernated: ["wake", "stop", "delete"],
  stopping: ["delete"],
  stopped: ["wake", "delete"],
  failed: ["wake", "delete"],
  lost: ["delete"],
};
const LABELS = { open: "Open", hibernate: "Hibernate", wake: "Wake", stop: "Stop", delete: "Delete" };

async function login(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  $("login-error").textContent = "";
  try {
    const reply = await fetch("/api/v1/auth/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: form.get("username"), password: form.get("password") }),
    });
    const data = await reply.json();
    if (!reply.ok) throw new Error(data?.error?.message || "login failed");
    setToken(data.token);
    event.target.reset();
    await show();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
}

async function act(session, action) {
  if (action === "open") { location.href = `/sessions/${session.id}/view`; return; }
  try {
    if (action === "delete") await api("DELETE", `/api/v1/sessions/${session.id}`);
    else await api("POST", `/api/v1/sessions/${session.id}/${action}`);
  } catch (error) {
    alert(error.message);
  }
  await refresh();
}

function actions(session) {
  const list = ACTIONS[session.state] || [];
  return el("div", { className: "actions" }, ...list.map((action) => {
    const label = `${LABELS[action]} ${session.name || session.template}`;
    const button = el("button", {
      type: "button", textContent: LABELS[action], className: action === "open" ? "primary" : action,
      dataset: { action },
    });
    button.setAttribute("aria-label", label);
    button.addEventListener("click", () => act(session, action));
    return button;
  }));
}

function card(session) {
  const title = session.name || `${session.template} ${session.id.slice(0, 8)}`;
  const meta = el("dl", { className: "meta" },
    el("dt", { textContent: "Template" }), el("dd", { textContent: session.template, dataset: { field: "template" } }),
    el("dt", { textContent: "Created" }), el("dd", { textContent: ago(session.created_at), title: session.created_at, dataset: { field: "age" } }),
    el("dt", { textContent: "Last activity" }), el("dd", { textContent: ago(session.last_activity_at), title: session.last_activity_at, dataset: { field: "activity" } }),
  );
  const state = el("span", { className: `state state-${session.state}`, textContent: session.state, dataset: { field: "state" } });
  const reason = session.reason ? el("p", { className: "reason", textContent: session.reason, dataset: { field: "reason" } }) : null;
  const thumb = el("div", { className: "thumb", dataset: { field: "thumbnail" } });
  if (session.state === "running") {
    thumb.tabIndex = 0;
    thumb.title = "Click to take a new screenshot";
    thumb.setAttribute("role", "button");
    thumb.setAttribute("aria-label", `New screenshot of ${title}`);
    const again = () => thumbnail(session, thumb, true);
    thumb.addEventListener("click", again);
    thumb.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") again(); });
  }
  const item = el("li", { className: "card", dataset: { sessionId: session.id, state: session.state } },
    thumb, el("div", { className: "body" },
      el("h3", { className: "name", textContent: title, dataset: { field: "name" } }), state, meta, reason, actions(session)));
  if (session.state === "running") thumbnail(session, thumb);
  return item;
}

let lastShown = "";

export async function refresh() {
  if (!token()) return show();
  const page = await api("GET", "/api/v1/sessions?limit=100");
  const shown = JSON.stringify(page.sessions.map((s) => [s.id, s.state, s.name, s.reason, s.state_changed_at]));
  $("sessions-empty").hidden = page.sessions.length > 0;
  if (shown === lastShown) { refreshTimes(page.sessions); return; }
  lastShown = shown;
  $("sessions").replaceChildren(...page.sessions.map(card));
}

function refreshTimes(sessions) {
  for (const session of sessions) {
    const item = document.querySelector(`[data-session-id="${session.id}"]`);
    if (!item) continue;
    item.querySelector("[data-field=age]").textContent = ago(session.created_at);
    const activity = item.querySelector("[data-field=activity]");
    activity.textContent = ago(session.last_activity_at);
    activity.title = session.last_activity_at;
  }
}

async function create(event) {
  event.preventDefault();
  $("create-error").textContent = "";
  const form = new FormData(event.target);
  const body = { template: form.get("template") };
  const name = String(form.get("name") || "").trim();
  if (name) body.name = name;
  try {
    await api("POST", "/api/v1/sessions", body);
    event.target.elements.name.value = "";
    await refresh();
  } catch (error) {
    $("create-error").textContent = error.message;
  }
}

function route() {
  const admin = location.hash === "#admin" && !$("nav").querySelector("[data-nav=admin]").hidden;
  $("console").hidden = admin;
  $("admin").hidden = !admin;
  for (const link of $("nav").querySelectorAll("a")) {
    if ((link.dataset.nav === "admin") === admin) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (admin) showAdmin().catch((error) => { $("admin-error").textContent = error.message; });
}

async function show() {
  const signedIn = Boolean(token());
  $("login").hidden = signedIn;
  $("nav").hidden = !signedIn;
  $("logout").hidden = !signedIn;
  if (!signedIn) { $("console").hidden = true; $("admin").hidden = true; $("who").textContent = ""; lastShown = ""; return; }
  const me = await api("GET", "/api/v1/users/me").catch(() => null);
  if (!me) return show();
  $("who").textContent = `${me.username}${me.role === "admin" ? " (admin)" : ""}`;
  $("nav").querySelector("[data-nav=admin]").hidden = me.role !== "admin";
  const { templates } = await api("GET", "/api/v1/templates");
  $("templates").replaceChildren(...templates.map((t) => new Option(t.name, t.name)));
  route();
  await refresh();
}

$("login").addEventListener("submit", login);
$("create").addEventListener("submit", create);
$("logout").addEventListener("click", () => { setToken(null); location.hash = ""; show(); });
window.addEventListener("hashchange", route);
setInterval(() => token() && !$("console").hidden && refresh().catch(() => {}), POLL_MS);
setInterval(() => token() && !$("admin").hidden && refreshAdmin().catch(() => {}), ADMIN_POLL_MS);
show();
