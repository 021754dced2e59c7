// The admin area (administrators only; the API refuses the rest anyway): agents with their HA
// instances, load and platform; users (create, disable, reset password); templates (edit); recent commands.
import { ago, api, el } from "./api.js";

const $ = (id) => document.getElementById(id);
const cell = (text, props = {}) => el("td", { textContent: text ?? "", ...props });
let templatesByName = new Map();

export async function showAdmin() {
  $("admin-error").textContent = "";
  await Promise.all([agents(), users(), templates(), commands()]);
}

// what changes on its own (agents' heartbeats and instances, commands' status) is read again while shown
export async function refreshAdmin() {
  await Promise.all([agents(), commands()]);
}

async function agents() {
  const [{ agents: list }, { sessions }] = await Promise.all([
    api("GET", "/api/v1/agents"), api("GET", "/api/v1/sessions?limit=1000"),
  ]);
  const load = new Map();
  for (const s of sessions) if (!["stopped", "failed", "lost"].includes(s.state)) load.set(s.agent_id, (load.get(s.agent_id) || 0) + 1);
  const details = await Promise.all(list.map((a) => api("GET", `/api/v1/agents/${encodeURIComponent(a.agent_id)}`).catch(() => a)));
  $("agents").tBodies[0].replaceChildren(...details.map((agent) => el("tr", { dataset: { agentId: agent.agent_id } },
    cell(agent.agent_id), cell(agent.status, { className: `status-${agent.status}` }), cell(agent.platform),
    cell(`${load.get(agent.agent_id) || 0} session(s)`, { dataset: { field: "load" } }),
    cell((agent.instances || []).map((i) => `${i.instance_id.slice(0, 8)} ${i.role} on ${i.gateway_pod}`).join("; ") || "none",
      { dataset: { field: "instances" } }),
    cell(ago(agent.last_heartbeat), { title: agent.last_heartbeat || "" }))));
}

async function users() {
  const { users: list } = await api("GET", "/api/v1/users");
  $("users").tBodies[0].replaceChildren(...list.map((user) => {
    const disable = el("button", { type: "button", textContent: user.disabled_at ? "Enable" : "Disable",
      dataset: { action: user.disabled_at ? "enable" : "disable" } });
    disable.addEventListener("click", () => patchUser(user, { disabled: !user.disabled_at }));
    const reset = el("button", { type: "button", textContent: "Reset password", dataset: { action: "reset-password" } });
    reset.addEventListener("click", () => {
      const password = prompt(`New password for ${user.username}`);
      if (password) patchUser(user, { password });
    });
    return el("tr", { dataset: { userId: user.id, username: user.username } },
      cell(user.username), cell(user.role), cell(ago(user.created_at), { title: user.created_at }),
      cell(user.disabled_at ? "disabled" : "active", { dataset: { field: "status" } }),
      el("td", { className: "actions" }, disable, reset));
  }));
}

async function patchUser(user, change) {
  try {
    await api("PATCH", `/api/v1/users/${user.id}`, change);
    await users();
    $("admin-error").textContent = "";
  } catch (error) {
    $("admin-error").textContent = error.message;
  }
}

async function createUser(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    await api("POST", "/api/v1/users", { username: form.get("username"), password: form.get("password"), role: form.get("role") });
    event.target.reset();
    $("admin-error").textContent = "";
    await users();
  } catch (error) {
    $("admin-error").textContent = error.message;
  }
}

async function templates() {
  const { templates: list } = await api("GET", "/api/v1/templates");
  templatesByName = new Map(list.map((t) => [t.name, t]));
  $("template-list").tBodies[0].replaceChildren(...list.map((t) => {
    const edit = el("button", { type: "button", textContent: "Edit", dataset: { action: "edit" } });
    edit.setAttribute("aria-label", `Edit ${t.name}`);
    edit.addEventListener("click", () => editTemplate(t.name));
    return el("tr", { dataset: { template: t.name } },
      cell(t.name), cell(t.description, { dataset: { field: "description" } }), cell(t.image || t.command.join(" ")),
      cell(String(t.cpu)), cell(`${t.memory} MiB`), cell(t.idle_timeout_seconds ? `${t.idle_timeout_seconds} s` : "never"),
      el("td", {}, edit));
  }));
}

function editTemplate(name) {
  const t = templatesByName.get(name);
  const form = $("template-edit");
  form.dataset.template = name;
  form.querySelector("[data-field=name]").textContent = name;
  const e = form.elements;
  e.description.value = t.description;
  e.image.value = t.image;
  e.command.value = t.command.join("\n");
  e.cpu.value = t.cpu;
  e.memory.value = t.memory;
  e.idle_timeout_seconds.value = t.idle_timeout_seconds;
  form.hidden = false;
  e.description.focus();
}

async function saveTemplate(event) {
  event.preventDefault();
  const form = event.target;
  const t = templatesByName.get(form.dataset.template);
  const e = form.elements;
  const spec = {
    description: e.description.value, image: e.image.value,
    command: e.command.value.split("\n").map((line) => line.trim()).filter(Boolean),
    ports: t.ports, cpu: Number(e.cpu.value), memory: Number(e.memory.value), env: t.env, platforms: t.platforms,
    idle_timeout_seconds: Number(e.idle_timeout_seconds.value),
  };
  try {
    await api("PUT", `/api/v1/templates/${encodeURIComponent(t.name)}`, spec);
    form.hidden = true;
    $("admin-error").textContent = "";
    await templates();
  } catch (error) {
    $("admin-error").textContent = error.message;
  }
}

async function commands() {
  const { commands: list } = await api("GET", "/api/v1/commands?limit=25");
  $("commands").tBodies[0].replaceChildren(...list.map((c) => el("tr", { dataset: { commandId: c.command_id, status: c.status, commandSession: c.session_id || "" } },
    cell(ago(c.created_at), { title: c.created_at }), cell(c.action), cell(c.agent_id),
    cell(c.session_id ? c.session_id.slice(0, 8) : "", { title: c.session_id || "" }),
    cell(c.status, { className: `status-${c.status}`, dataset: { field: "status" } }),
    cell(`${c.attempts}/${c.max_attempts}`), cell(c.error_message))));
}

$("user-create").addEventListener("submit", createUser);
$("template-edit").addEventListener("submit", saveTemplate);
$("template-edit").querySelector("[data-action=cancel-edit]").addEventListener("click", () => { $("template-edit").hidden = true; });
