// Talking to the joblot API: JSON requests, the token, file downloads, and event streams.
//
// The token (only when the server has tokens) is kept in this tab's sessionStorage and sent
// in an Authorization header, never in a URL. EventSource cannot send headers, so streams
// are read with fetch() and parsed here.

const TOKEN_KEY = "joblot.token";
const API = "api/v2"; // relative: the dashboard works behind a path prefix too

/** An error answer of the API: {"error": name, "description": text}. */
export class ApiError extends Error {
  constructor(status, name, description) {
    super(description || name || `HTTP ${status}`);
    this.status = status;
    this.name = name || `HTTP ${status}`;
    this.description = description || "";
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

let clockOffset = 0; // server time minus this browser's, when they differ by seconds

/** The server's time now, in ms (ages and stalls are measured against its timestamps). */
export function serverNow() {
  return Date.now() + clockOffset;
}

function noteServerTime(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (Number.isNaN(date)) return;
  const offset = date - Date.now();
  clockOffset = Math.abs(offset) > 3000 ? offset : 0; // Date has 1 s resolution
}

function headers(extra = {}) {
  const all = { Accept: "application/json", ...extra };
  const t = token();
  if (t) all.Authorization = `Bearer ${t}`;
  return all;
}

/** `api/v2/<path>?<query>`; query values that are null or "" are left out. */
export function apiUrl(path, query = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") params.set(key, value);
  }
  const qs = params.toString();
  return `${API}/${path}${qs ? `?${qs}` : ""}`;
}

async function failure(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: keep the status alone
  }
  return new ApiError(response.status, body.error, body.description);
}

/** GET (or another method) an API path; the decoded JSON body, or an ApiError. */
export async function call(method, path, { query, body } = {}) {
  const init = { method, headers: headers(), cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(apiUrl(path, query), init);
  noteServerTime(response);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

/** Save what an API path answers as a file, named as the server says (Content-Disposition)
 *  or `fallback`. Without a token a plain link would do; with one, the file is fetched with
 *  the Authorization header and handed over as a blob. */
export async function download(path, query, fallback) {
  const response = await fetch(apiUrl(path, query), { headers: headers({ Accept: "*/*" }) });
  if (!response.ok) throw await failure(response);
  const named = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
  const url = URL.createObjectURL(await response.blob());
  const filename = named ? named[1] : fallback;
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Split Server-Sent Events text into events; returns [events, unparsed rest]. */
export function parseEvents(text) {
  const events = [];
  const blocks = text.replace(/\r\n?/g, "\n").split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    const event = { type: "message", id: null, data: [] };
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue; // a comment: keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event.type = value;
      else if (field === "id") event.id = value;
      else if (field === "data") event.data.push(value);
    }
    if (event.data.length || event.id !== null) {
      events.push({ ...event, data: event.data.join("\n") });
    }
  }
  return [events, rest];
}

/** A Server-Sent Events stream read with fetch(): reconnects with Last-Event-ID after a
 *  drop, backing off up to 15 s. `onEvent(type, data)`, `onState("live" | "connecting" |
 *  "unauthorized" | "unavailable")`. */
export class EventStream {
  constructor(path, { onEvent, onState }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = null;
    this.controller = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    let pause = 1000;
    while (!this.stopped) {
      this.onState("connecting");
      try {
        await this.read();
        pause = 1000; // the server ended a healthy stream: come back at once
      } catch (error) {
        if (this.stopped) return;
        if (error instanceof ApiError && error.status === 401) {
          this.onState("unauthorized");
          return;
        }
        if (error instanceof ApiError && error.status === 404) {
          this.onState("unavailable");
          return;
        }
        this.onState("connecting");
      }
      if (this.stopped) return;
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 15_000);
    }
  }

  async read() {
    this.controller = new AbortController();
    const extra = { Accept: "text/event-stream" };
    if (this.lastId !== null) extra["Last-Event-ID"] = this.lastId;
    const response = await fetch(apiUrl(this.path), {
      headers: headers(extra),
      cache: "no-store",
      signal: this.controller.signal,
    });
    noteServerTime(response);
    if (!response.ok) throw await failure(response);
    this.onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let events;
      [events, buffer] = parseEvents(buffer + value);
      for (const event of events) {
        if (event.id !== null) this.lastId = event.id;
        if (event.data) this.dispatch(event);
      }
    }
  }

  dispatch(event) {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return; // not ours to understand
    }
    this.onEvent(event.type, data);
  }
}
