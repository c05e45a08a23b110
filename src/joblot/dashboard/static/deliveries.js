// A job's webhook deliveries on its page: each event, its state and every attempt, and
// "send again". Read when the page opens, when the job finishes, and when the next attempt
// is due: never on a timer of its own.

import { call } from "./api.js";
import { badge, count, h, replace, when } from "./dom.js";

const AFTER_DUE_MS = 2000; // look again this long after an attempt was due

/** The deliveries panel of job `id`; `.refresh()` reads them again. */
export function deliveriesPanel(ctx, path) {
  let timer = null;
  let closed = false;
  const body = h("div");
  const note = h("p", { class: "muted" });
  const again = h("button", { type: "button", hidden: true, onclick: redeliver }, "Send again");
  const el = h(
    "section",
    { class: "panel deliveries" },
    h("div", { class: "panel-head" }, h("h2", {}, "Webhook deliveries"), again),
    note,
    body,
  );

  function show(deliveries, { finished }) {
    clearTimeout(timer);
    if (!deliveries.length) {
      note.textContent = finished
        ? "None: this job was submitted without a callback_url."
        : "The job's event is delivered when it finishes, if it was submitted with a callback_url.";
      replace(body);
      again.hidden = true;
      return;
    }
    note.textContent = "";
    again.hidden = !finished;
    replace(body, deliveries.map(delivery));
    const due = deliveries
      .filter((d) => d.state === "pending" && d.next_attempt_at)
      .map((d) => Date.parse(d.next_attempt_at))
      .filter((t) => !Number.isNaN(t));
    const pending = deliveries.some((d) => d.state === "pending");
    if (pending && !closed) {
      const next = due.length ? Math.min(...due) : Date.now();
      const wait = Math.min(Math.max(next - Date.now(), 0) + AFTER_DUE_MS, 2 ** 31 - 1);
      timer = setTimeout(() => refresh(finished), wait);
    }
  }

  function delivery(d) {
    const last = d.attempts[d.attempts.length - 1];
    const outcome = (a) => (a.status_code ? `HTTP ${a.status_code}` : "") + (a.error ? ` ${a.error}` : "");
    return h(
      "details",
      { class: "delivery", dataset: { deliveryId: d.id } },
      h(
        "summary",
        {},
        badge(d.state),
        " ",
        h("span", { class: "mono" }, d.type),
        " · ",
        `${count(d.attempts.length)} attempt${d.attempts.length === 1 ? "" : "s"}`,
        last ? ` · last ${when(last.at)}: ${outcome(last).trim() || "no answer"}` : "",
        d.next_attempt_at && d.state === "pending" ? ` · next ${when(d.next_attempt_at)}` : "",
      ),
      h("p", { class: "mono muted" }, `webhook-id ${d.id}`),
      d.attempts.length
        ? h(
            "ol",
            { class: "attempts" },
            d.attempts.map((a) => h("li", {}, `${when(a.at)} · ${outcome(a).trim() || "no answer"}`)),
          )
        : h("p", { class: "muted" }, "Not attempted yet."),
    );
  }

  async function refresh(finished) {
    try {
      const answer = await call("GET", `${path}/deliveries`);
      show(answer.deliveries, { finished });
    } catch (error) {
      ctx.fail(error);
    }
  }

  async function redeliver() {
    again.disabled = true;
    try {
      const answer = await call("POST", `${path}/deliveries/redeliver`);
      show(answer.deliveries, { finished: true });
      ctx.notice("The event is queued to be sent again.");
    } catch (error) {
      ctx.fail(error);
    } finally {
      again.disabled = false;
    }
  }

  return {
    el,
    refresh,
    close() {
      closed = true;
      clearTimeout(timer);
    },
  };
}
