// The web console: log in, see my sessions with their states, create one, drive it, open its viewer.
import { api, setToken, token } from "./api.js";

const $ = (id) => document.getElementById(id);

async function login(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const reply = await fetch("/api/v1/auth/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: form.get("username"), password: form.get("password") }),
    });
    const data = await reply.json();
    if (!reply.ok) throw new Error(data?.error?.message || "login failed");
    setToken(data.token);
    await show();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
}

function button(label, action) {
  const element = document.createElement("button");
  element.textContent = label;
  element.dataset.action = label.toLowerCase();
  element.addEventListener("click", action);
  return element;
}

function row(session) {
  const tr = document.createElement("tr");
  tr.dataset.session = session.id;
  for (const [text, cls] of [[session.id.slice(0, 8), ""], [session.template, ""],
    [session.state, `state state-${session.state}`], [session.reason || "", ""]]) {
    const td = document.createElement("td");
    td.textContent = text;
    td.className = cls;
    tr.append(td);
  }
  const actions = document.createElement("td");
  const verb = (name) => async () => { await api("POST", `/api/v1/sessions/${session.id}/${name}`).catch(alert); refresh(); };
  actions.append(
    button("Hibernate", verb("hibernate")), button("Wake", verb("wake")), button("Stop", verb("stop")),
    button("Delete", async () => { await api("DELETE", `/api/v1/sessions/${session.id}`).catch(alert); refresh(); }),
  );
  const view = document.createElement("a");
  view.href = `/sessions/${session.id}/view`;
  view.textContent = "Open viewer";
  view.className = "view";
  actions.append(" ", view);
  tr.append(actions);
  return tr;
}

async function refresh() {
  if (!token()) return show();
  const page = await api("GET", "/api/v1/sessions?limit=100");
  $("sessions").replaceChildren(...page.sessions.map(row));
}

async function create(event) {
  event.preventDefault();
  $("create-error").textContent = "";
  try {
    await api("POST", "/api/v1/sessions", { template: $("templates").value });
    await refresh();
  } catch (error) {
    $("create-error").textContent = error.message;
  }
}

async function show() {
  const signedIn = Boolean(token());
  $("login").hidden = signedIn;
  $("console").hidden = !signedIn;
  $("logout").hidden = !signedIn;
  if (!signedIn) return;
  const me = await api("GET", "/api/v1/users/me").catch(() => null);
  if (!me) return show();
  $("who").textContent = me.username;
  const { templates } = await api("GET", "/api/v1/templates");
  $("templates").replaceChildren(...templates.map((t) => new Option(t.name, t.name)));
  await refresh();
}

$("login").addEventListener("submit", login);
$("create").addEventListener("submit", create);
$("logout").addEventListener("click", () => { setToken(null); show(); });
setInterval(() => token() && refresh().catch(() => {}), 2000);
show();
