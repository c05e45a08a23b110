// The dashboard: asks for a token when the server has tokens, routes between the job list
// (#/) and a job's page (#/jobs/<id>), and keeps one event stream of the tenant's changes
// open for both, so an open dashboard costs the server no polling.

import { ApiError, EventStream, call, forgetToken, setToken, token } from "./api.js";
import { h, replace } from "./dom.js";
import { Job } from "./jobs.js";
import { jobView } from "./job.js";
import { listView } from "./list.js";

const main = document.getElementById("main");
const live = document.getElementById("live");
const forget = document.getElementById("forget");
const jobs = new Map(); // id -> Job, shared by the views and the stream
let view = null;
let stream = null;

const ctx = {
  jobs,
  remember(status, stats) {
    const known = jobs.get(status.id);
    if (known) known.update(status, stats);
    else jobs.set(status.id, new Job(status, stats));
    return jobs.get(status.id);
  },
  navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  fail(error) {
    if (error instanceof ApiError && error.status === 401) {
      askForToken(token() ? "That token was refused: Couldn't authenticate you." : "");
      return;
    }
    notice(describe(error), "error");
  },
  notice: (text) => notice(text, "info"),
  confirm,
};

function describe(error) {
  if (error instanceof ApiError) {
    return `${error.status} ${error.name}${error.description ? `: ${error.description}` : ""}`;
  }
  return `Cannot reach the joblot server: ${error.message || error}`;
}

function notice(text, kind) {
  const old = document.querySelector(".notice");
  if (old) old.remove();
  const el = h(
    "div",
    { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", {}, text),
    h("button", { type: "button", class: "link", "aria-label": "Dismiss", onclick: () => el.remove() }, "×"),
  );
  main.before(el);
}

/** A modal question; resolves true if the user confirmed. */
function confirm(title, text, yes) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm" },
      h("h2", {}, title),
      h("p", {}, text),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", class: "danger", value: "yes", onclick: () => dialog.close("yes") }, yes),
        h("button", { type: "button", value: "no", autofocus: true, onclick: () => dialog.close("no") }, "Keep it"),
      ),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "yes");
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// -- token -------------------------------------------------------------------------------------

function askForToken(error) {
  stopStream();
  forgetToken();
  forget.hidden = true;
  view = null;
  jobs.clear();
  const input = h("input", {
    id: "token",
    type: "password",
    autocomplete: "off",
    required: true,
    placeholder: "API token",
    "aria-label": "API token",
  });
  const problem = h("p", { class: "error", role: "alert", hidden: !error }, error);
  const form = h(
    "form",
    { class: "gate", onsubmit: (e) => { e.preventDefault(); tryToken(input.value.trim(), problem); } },
    h("h1", {}, "This joblot server needs a token"),
    h("p", {}, "Enter an API token (from ", h("code", {}, "joblot tokens create --tenant NAME"), "). It is kept in this tab only, for this session, and sent in a header, never in a URL."),
    input,
    h("button", { type: "submit" }, "Open dashboard"),
    problem,
  );
  replace(main, form);
  input.focus();
}

async function tryToken(value, problem) {
  if (!value) return;
  setToken(value);
  try {
    await call("GET", "job_statuses", { query: { "page[size]": 1 } });
  } catch (error) {
    forgetToken();
    problem.hidden = false;
    problem.textContent =
      error instanceof ApiError && error.status === 401
        ? "That token was refused: Couldn't authenticate you."
        : describe(error);
    return;
  }
  start();
}

// -- live updates ------------------------------------------------------------------------------

function showLive(state) {
  live.hidden = false;
  live.className = `live ${state}`;
  live.dataset.state = state;
  live.textContent = { live: "live", connecting: "reconnecting…", unavailable: "not live" }[state] || state;
  live.title = state === "unavailable" ? "This server has no tenant event stream: reload to refresh." : "";
}

function startStream() {
  stopStream();
  stream = new EventStream("job_statuses/events", {
    onEvent(type, data) {
      if (type !== "job_status" || !data.job_status) return;
      const job = ctx.remember(data.job_status, data.job_stats);
      if (view) view.onJob(job);
    },
    onState(state) {
      if (state === "unauthorized") askForToken("The token stopped working: enter another one.");
      else showLive(state);
    },
  }).start();
}

function stopStream() {
  if (stream) stream.stop();
  stream = null;
  live.hidden = true;
}

// -- routing -----------------------------------------------------------------------------------

function route() {
  if (view) view.destroy();
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split("?");
  const match = path.match(/^\/jobs\/([^/]+)$/);
  view = match ? jobView(ctx, decodeURIComponent(match[1])) : listView(ctx, new URLSearchParams(query));
  document.title = `${view.title} · joblot`;
  const old = document.querySelector(".notice");
  if (old) old.remove();
  replace(main, view.el);
}

async function start() {
  forget.hidden = !token();
  startStream();
  route();
}

async function boot() {
  window.addEventListener("hashchange", () => { if (!document.querySelector(".gate")) route(); });
  forget.addEventListener("click", () => askForToken(""));
  setInterval(() => view && view.tick(), 1000);
  try {
    // One small read tells whether this server wants a token (401) before anything is shown.
    await call("GET", "job_statuses", { query: { "page[size]": 1 } });
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      askForToken(token() ? "That token was refused: Couldn't authenticate you." : "");
      return;
    }
    replace(main, h("p", { class: "error", role: "alert" }, describe(error)));
    return;
  }
  start();
}

boot();
