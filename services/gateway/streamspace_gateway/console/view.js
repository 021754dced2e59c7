// The viewer: a ticket from the REST API, then noVNC's RFB client on the session's stream WebSocket.
// Display modes (scale, remote resize, actual size), full screen, keyboard grab and key combinations,
// clipboard both ways, and reconnection with a state line that says what is happening and why.
import RFB from "/novnc/core/rfb.js";
import { api, streamUrl, token } from "./api.js";

const $ = (id) => document.getElementById(id);
const sessionId = location.pathname.split("/")[2];
const DELAYS = [1, 2, 4, 8, 15, 30]; // seconds before each reconnect in a row; then it gives up
const MODE = "streamspace.viewer.mode";
const KEYS = { // keysym and KeyboardEvent.code, pressed in order and released in reverse
  "alt-tab": [[0xffe9, "AltLeft"], [0xff09, "Tab"]],
  "alt-f4": [[0xffe9, "AltLeft"], [0xffc1, "F4"]],
  "ctrl-w": [[0xffe3, "ControlLeft"], [0x0077, "KeyW"]],
  "ctrl-esc": [[0xffe3, "ControlLeft"], [0xff1b, "Escape"]],
  "super": [[0xffeb, "MetaLeft"]],
  "print": [[0xff61, "PrintScreen"]],
};
let rfb = null;
let retries = 0; // reconnects in a row without a connect (a replica restarting closes with 1012)
let closing = false; // we closed it ourselves: no reconnect
let timer = null;

function status(state, text = state) {
  const line = $("status");
  line.textContent = text;
  line.dataset.state = state;
  $("reconnect").hidden = state !== "failed";
}

function showSession(session) {
  const name = session.name || `${session.template} ${session.id.slice(0, 8)}`;
  $("session-name").textContent = name;
  $("session-template").textContent = session.template;
  document.title = `${name} · StreamSpace`;
}

async function connect() {
  clearTimeout(timer);
  if (!token()) { location.href = "/"; return; }
  let session;
  try {
    session = await api("GET", `/api/v1/sessions/${sessionId}`);
  } catch (error) {
    if (!token()) { location.href = "/"; return; }
    return retry(`the session could not be read (${error.message})`);
  }
  showSession(session);
  $("wake").hidden = true;
  if (session.state !== "running") return notRunning(session);
  status("connecting", "connecting");
  let url;
  try {
    url = await streamUrl(sessionId);
  } catch (error) {
    return retry(error.message);
  }
  open(url);
}

function notRunning(session) {
  if (["pending", "starting"].includes(session.state)) {
    status("connecting", `connecting: the session is ${session.state}`);
    timer = setTimeout(connect, 1000);
    return;
  }
  const reason = session.reason ? `: ${session.reason}` : "";
  status("not-running", `not running (it is ${session.state}${reason})`);
  $("wake").hidden = !["hibernated", "stopped", "failed"].includes(session.state);
}

function open(url) {
  const socket = new WebSocket(url, ["binary"]); // ours, so that its close code and reason can be shown
  let closed = null;
  socket.addEventListener("close", (event) => { closed = event; });
  closing = false;
  rfb = new RFB($("screen"), socket, { shared: true });
  applyMode();
  rfb.addEventListener("connect", () => { retries = 0; status("connected"); rfb.focus(); });
  rfb.addEventListener("disconnect", () => {
    rfb = null;
    if (closing) return;
    const why = closed?.reason || (closed?.code ? `closed with ${closed.code}` : "the stream was lost");
    retry(why);
  });
  rfb.addEventListener("securityfailure", (event) => { closed = { reason: event.detail.reason || "security failure" }; });
  rfb.addEventListener("clipboard", (event) => fromDesktop(event.detail.text));
  window.rfb = rfb;
}

async function retry(reason) {
  // a session that stopped running is no stream failure: say so, and offer to wake it
  const session = await api("GET", `/api/v1/sessions/${sessionId}`).catch(() => null);
  if (session && session.state !== "running" && !["pending", "starting"].includes(session.state)) return notRunning(session);
  if (retries >= DELAYS.length) { status("failed", `failed: ${reason}`); return; }
  let left = DELAYS[retries++];
  const tick = () => {
    if (left <= 0) { connect(); return; }
    status("reconnecting", `reconnecting in ${left} s (${reason})`);
    left -= 1;
    timer = setTimeout(tick, 1000);
  };
  tick();
}

// Display: scale the remote screen to the window, resize the remote desktop to the window (RandR), or 1:1.
function applyMode() {
  const mode = $("scaling").value;
  localStorage.setItem(MODE, mode);
  $("screen").dataset.mode = mode;
  if (!rfb) return;
  rfb.scaleViewport = mode === "scale";
  rfb.resizeSession = mode === "remote";
  rfb.clipViewport = false;
}

async function toggleFullscreen() {
  if (document.fullscreenElement) await document.exitFullscreen();
  else await document.documentElement.requestFullscreen();
}

async function fullscreenChanged() {
  const on = Boolean(document.fullscreenElement);
  $("fullscreen").setAttribute("aria-pressed", String(on));
  $("fullscreen").textContent = on ? "Leave full screen" : "Full screen";
  if (on && $("keyboard-grab").getAttribute("aria-pressed") === "true") await navigator.keyboard?.lock?.().catch(() => {});
  rfb?.focus();
}

// Keyboard grab: the browser hands shortcuts such as Alt+Tab or Escape to the page (Keyboard Lock API,
// full screen only); noVNC then sends them to the desktop.
async function toggleGrab() {
  const button = $("keyboard-grab");
  const on = button.getAttribute("aria-pressed") !== "true";
  button.setAttribute("aria-pressed", String(on));
  if (!navigator.keyboard?.lock) { note("this browser cannot grab the keyboard; use Send keys"); return; }
  if (on) {
    if (!document.fullscreenElement) await document.documentElement.requestFullscreen().catch(() => {});
    await navigator.keyboard.lock().catch(() => {});
  } else {
    navigator.keyboard.unlock();
  }
  rfb?.focus();
}

function sendKeys(name) {
  const keys = KEYS[name];
  if (!rfb || !keys) return;
  for (const [keysym, code] of keys) rfb.sendKey(keysym, code, true);
  for (const [keysym, code] of [...keys].reverse()) rfb.sendKey(keysym, code, false);
  rfb.focus();
}

// Clipboard. From the desktop: into the panel's text area, and into this computer's clipboard when the
// browser allows it. To the desktop: the text area's Send button, and on focus this computer's clipboard
// when the browser has granted clipboard-read (no prompt is ever forced on the user).
function note(text) { $("clipboard-note").textContent = text; }

async function fromDesktop(text) {
  $("clipboard-text").value = text;
  try {
    await navigator.clipboard.writeText(text);
    note("copied from the desktop to this computer");
  } catch {
    note("copied from the desktop: select the text above to copy it");
  }
}

function toDesktop(text) {
  if (!rfb) { note("not connected"); return; }
  rfb.clipboardPasteFrom(text);
  note(`sent ${text.length} character(s) to the desktop`);
}

let lastLocal = null;
async function syncFromComputer() {
  if (!rfb || !navigator.clipboard?.readText || !navigator.permissions) return;
  const permission = await navigator.permissions.query({ name: "clipboard-read" }).catch(() => null);
  if (permission?.state !== "granted") return;
  const text = await navigator.clipboard.readText().catch(() => null);
  if (text && text !== lastLocal) {
    lastLocal = text;
    $("clipboard-text").value = text;
    toDesktop(text);
  }
}

function toggleClipboard() {
  const panel = $("clipboard-panel");
  panel.hidden = !panel.hidden;
  $("clipboard").setAttribute("aria-expanded", String(!panel.hidden));
  if (!panel.hidden) $("clipboard-text").focus();
}

$("scaling").value = localStorage.getItem(MODE) || "scale";
$("scaling").addEventListener("change", applyMode);
$("fullscreen").addEventListener("click", toggleFullscreen);
document.addEventListener("fullscreenchange", fullscreenChanged);
$("keyboard-grab").addEventListener("click", toggleGrab);
$("ctrl-alt-del").addEventListener("click", () => { rfb?.sendCtrlAltDel(); rfb?.focus(); });
$("keys").addEventListener("change", (event) => { sendKeys(event.target.value); event.target.value = ""; });
$("clipboard").addEventListener("click", toggleClipboard);
$("clipboard-send").addEventListener("click", () => toDesktop($("clipboard-text").value));
$("clipboard-copy").addEventListener("click", () => fromDesktop($("clipboard-text").value));
window.addEventListener("focus", syncFromComputer);
$("screen").addEventListener("mousedown", syncFromComputer);
$("reconnect").addEventListener("click", () => { retries = 0; connect(); });
$("wake").addEventListener("click", async () => {
  $("wake").hidden = true;
  try {
    await api("POST", `/api/v1/sessions/${sessionId}/wake`);
  } catch (error) {
    status("failed", `failed: ${error.message}`);
    return;
  }
  retries = 0;
  status("connecting", "connecting: waking the session");
  timer = setTimeout(connect, 1000);
});
window.addEventListener("pagehide", () => { closing = true; rfb?.disconnect(); });
applyMode();
connect();
