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
  if (!response.ok) throw new Error(data?.error?.message || `${method} ${path}: ${response.status}`);
  return data;
}
