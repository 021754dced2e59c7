// The console's only link to the gateway: the REST API with the login token (kept for this tab only).
const TOKEN = "streamspace.token";

export const token = () => sessionStorage.getItem(TOKEN);
export const setToken = (value) => value ? sessionStorage.setItem(TOKEN, value) : sessionStorage.removeItem(TOKEN);

export async function api(method, path, body) {
  const headers = { "Authorization": `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = response.status === 204 ? null : await response.json();
  if (response.status === 401) setToken(null);
  if (!response.ok) {
    const error = data?.error || {};
    const field = error.field ? ` (${error.field})` : "";
    throw new Error(error.message ? `${error.message}${field}` : `${method} ${path}: ${response.status}`);
  }
  return data;
}

// A stream ticket's WebSocket address on this gateway (the ticket is single-use and short-lived).
export async function streamUrl(sessionId) {
  const { url } = await api("POST", `/api/v1/sessions/${sessionId}/stream-ticket`);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${url}`;
}

// DOM helper: el("td", { className: "x", dataset: { a: 1 } }, "text", child, ...)
export function el(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  const { dataset, ...rest } = props;
  Object.assign(element, rest);
  Object.assign(element.dataset, dataset || {});
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

// "3 min ago", "2 h ago": how long ago an RFC 3339 time was.
export function ago(time) {
  if (!time) return "never";
  const seconds = Math.max(0, (Date.now() - Date.parse(time)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}
