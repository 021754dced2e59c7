// Thumbnails of running desktops, taken through the stream path like any viewer: a fresh stream ticket,
// a view-only noVNC connection, a snapshot of its canvas once the first frame is drawn, then disconnect.
// An open stream is use (it resets the idle clock, docs/streams.md), so a snapshot is taken once per
// running period (keyed by the time the session became running) and again only when asked (a click).
import RFB from "/novnc/core/rfb.js";
import { streamUrl } from "./api.js";

const taken = new Map(); // session id -> { key, url }
const busy = new Set();

export function thumbnail(session, slot, again = false) {
  const sessionId = session.id;
  const last = taken.get(sessionId);
  if (last) slot.replaceChildren(image(last.url));
  if ((last && last.key === session.state_changed_at && !again) || busy.has(sessionId)) return;
  busy.add(sessionId);
  slot.setAttribute("aria-busy", "true");
  snapshot(sessionId)
    .then((url) => {
      taken.set(sessionId, { key: session.state_changed_at, url });
      const current = document.querySelector(`[data-session-id="${sessionId}"] [data-field=thumbnail]`);
      current?.replaceChildren(image(url));
    })
    .catch(() => {})
    .finally(() => {
      busy.delete(sessionId);
      document.querySelector(`[data-session-id="${sessionId}"] [data-field=thumbnail]`)?.removeAttribute("aria-busy");
    });
}

function image(url) {
  const img = document.createElement("img");
  img.src = url;
  img.alt = "Screenshot of the desktop";
  return img;
}

async function snapshot(sessionId) {
  const url = await streamUrl(sessionId);
  const host = document.createElement("div");
  host.className = "offscreen";
  document.body.append(host);
  const rfb = new RFB(host, url, { wsProtocols: ["binary"], shared: true });
  rfb.viewOnly = true;
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no frame")), 15000);
      rfb.addEventListener("disconnect", () => { clearTimeout(timer); reject(new Error("disconnected")); });
      rfb.addEventListener("connect", () => waitForFrame(host, (canvas) => {
        clearTimeout(timer);
        resolve(scaled(canvas));
      }));
    });
  } finally {
    try { rfb.disconnect(); } catch { /* already closed */ }
    host.remove();
  }
}

// noVNC has no "frame drawn" event: wait until its canvas holds non-blank pixels (or a short while).
function waitForFrame(host, done, tries = 0) {
  const canvas = host.querySelector("canvas");
  if (canvas && canvas.width > 0 && (drawn(canvas) || tries > 20)) { done(canvas); return; }
  setTimeout(() => waitForFrame(host, done, tries + 1), 150);
}

function drawn(canvas) {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < data.length; i += 4 * 97) if (data[i] || data[i + 1] || data[i + 2]) return true;
  return false;
}

function scaled(canvas) {
  const width = 320;
  const out = document.createElement("canvas");
  out.width = width;
  out.height = Math.round((canvas.height / canvas.width) * width) || 200;
  out.getContext("2d").drawImage(canvas, 0, 0, out.width, out.height);
  return out.toDataURL("image/png");
}
