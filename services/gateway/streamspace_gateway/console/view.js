// The viewer: a ticket from the REST API, then noVNC's RFB client on the session's stream WebSocket.
import RFB from "/novnc/core/rfb.js";
import { api, token } from "./api.js";

const status = (text) => { document.getElementById("status").textContent = text; };
const sessionId = location.pathname.split("/")[2];
let retries = 0; // reconnects in a row without a connect (a replica restarting closes with 1012)

async function connect() {
  if (!token()) { location.href = "/"; return; }
  let session;
  try {
    session = await api("GET", `/api/v1/sessions/${sessionId}`);
  } catch (error) {
    status(`no such session (${error.message})`);
    return;
  }
  if (session.state !== "running") {
    status(`the session is not running (it is ${session.state})`);
    const wake = document.getElementById("wake");
    wake.hidden = !["hibernated", "stopped", "failed"].includes(session.state);
    wake.onclick = async () => { await api("POST", `/api/v1/sessions/${sessionId}/wake`); setTimeout(connect, 1000); };
    if (["pending", "starting"].includes(session.state)) setTimeout(connect, 1000);
    return;
  }
  const { url } = await api("POST", `/api/v1/sessions/${sessionId}/stream-ticket`);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  status("connecting");
  const rfb = new RFB(document.getElementById("screen"), `${scheme}//${location.host}${url}`, { wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => { retries = 0; status("connected"); rfb.focus(); });
  rfb.addEventListener("disconnect", (event) => {
    status(event.detail.clean ? "disconnected" : "disconnected (the stream was lost)");
    if (retries++ < 3) setTimeout(connect, 1000 * retries); // a new ticket, on whichever replica answers
  });
  window.rfb = rfb;
}

connect();
