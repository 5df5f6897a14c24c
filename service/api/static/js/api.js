// HTTP and WebSocket access to the tomolock API (URLs relative to the page, so a reverse
// proxy may mount the service under a prefix).

const base = new URL(".", window.location.href);

export function apiUrl(path) {
  return new URL(path, base).toString();
}

/** Error carrying the HTTP status and the server's `detail`. */
export class ApiError extends Error {
  constructor(status, statusText, detail) {
    super(`${status} ${statusText}${detail ? `: ${detail}` : ""}`);
    this.status = status;
  }
}

function detailOf(body) {
  if (body == null) return "";
  const d = body.detail ?? body;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")} ${e.msg}`).join("; ");
  return typeof d === "string" ? d : JSON.stringify(d);
}

async function request(path, options = {}) {
  const response = await fetch(apiUrl(path), { cache: "no-store", ...options });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, response.statusText, detailOf(body));
  return body;
}

export function getJSON(path) {
  return request(path, { headers: { Accept: "application/json" } });
}

/** POST /control/enable or /control/disable with a bearer token. */
export function setLoop(enabled, token, reason) {
  return request(`control/${enabled ? "enable" : "disable"}`, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Accept: "application/json",
      Authorization: `Bearer ${token}`,
    },
    body: JSON.stringify({ reason }),
  });
}

/**
 * The /ws/live feed with automatic reconnection.
 * `onEnvelope({seq, dropped, events})` gets every message; `onLink(up)` every state change.
 */
export function connectLive(onEnvelope, onLink) {
  const url = new URL("ws/live", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  let delay = 500;
  const open = () => {
    const ws = new WebSocket(url);
    ws.onopen = () => {
      delay = 500;
      onLink(true);
    };
    ws.onmessage = (msg) => {
      const envelope = JSON.parse(msg.data);
      if (envelope.type === "live") onEnvelope(envelope);
    };
    ws.onclose = () => {
      onLink(false);
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 5000);
    };
  };
  open();
}
