// The job page: progress, message, rate and ETA; the results in pages, failures only if
// asked; cancel (confirmed), retry the failed items, export (what the filter shows); the
// webhook deliveries of its completion event.

import { call, download } from "./api.js";
import { deliveriesPanel } from "./deliveries.js";
import { badge, clock, count, h, rate, replace, shortId, span, when } from "./dom.js";

const RESULTS_PAGE = 50;
const ENTRY_KEYS = new Set(["index", "id", "success", "error", "details", "action"]);

/** The page of job `id`. */
export function jobView(ctx, id) {
  const path = `job_statuses/${encodeURIComponent(id)}`;
  let job = null;
  let shownFinished = false; // whether the page last showed the job finished
  const results = { after: null, before: null, failuresOnly: false, loading: false };

  const title = h("h1", {}, "Job");
  const statusEl = h("span");
  const flag = h("span", { class: "flag", hidden: true });
  const bar = h("progress", { max: 1, value: 0, class: "big" });
  const facts = h("dl", { class: "facts" });
  const message = h("p", { class: "message" });
  const cancelButton = h("button", { type: "button", class: "danger", hidden: true, onclick: cancel }, "Cancel job…");
  const retryButton = h("button", { type: "button", hidden: true, onclick: retry }, "Retry failed items");
  const exports = ["jsonl", "csv"].map((format) =>
    h("button", { type: "button", dataset: { format }, onclick: () => exportAs(format) }, `Export ${format.toUpperCase()}`),
  );
  const failuresOnly = h("input", { type: "checkbox", id: "failures-only", onchange: onFilter });
  const resultsBody = h("tbody");
  const resultsNote = h("p", { class: "muted" });
  const prev = h("button", { type: "button", disabled: true, onclick: () => loadResults({ before: results.before }) }, "← Previous");
  const next = h("button", { type: "button", disabled: true, onclick: () => loadResults({ after: results.after }) }, "Next →");
  const refreshButton = h("button", { type: "button", class: "link", onclick: () => loadResults(results.current) }, "Refresh");
  const deliveries = deliveriesPanel(ctx, path);
  const resultsTable = h(
    "table",
    { class: "results" },
    h("thead", {}, h("tr", {}, ["#", "Item id", "Outcome", "Error", "Details", "Other"].map((t) => h("th", { scope: "col" }, t)))),
    resultsBody,
  );

  const el = h(
    "section",
    { class: "job", dataset: { jobId: id } },
    h("p", {}, h("a", { href: "#/" }, "← All jobs")),
    h("div", { class: "headline" }, title, statusEl, flag),
    h("p", { class: "mono muted" }, id),
    bar,
    facts,
    message,
    h("div", { class: "actions" }, cancelButton, retryButton, ...exports),
    h(
      "section",
      { class: "panel" },
      h(
        "div",
        { class: "panel-head" },
        h("h2", {}, "Results"),
        h("label", { class: "check" }, failuresOnly, " Failures only"),
        refreshButton,
      ),
      resultsNote,
      resultsTable,
      h("div", { class: "pager" }, prev, next),
    ),
    deliveries.el,
  );

  function render() {
    if (!job) return;
    const { status } = job;
    title.textContent = status.job_type;
    replace(statusEl, badge(status.status));
    bar.max = Math.max(status.total ?? 1, 1);
    bar.value = status.progress ?? 0;
    message.textContent = status.message ?? "";
    message.hidden = !status.message;
    cancelButton.hidden = job.finished;
    shownFinished = job.finished;
    const failures = job.failures;
    retryButton.hidden = !job.finished || !failures;
    retryButton.textContent = `Retry ${count(failures)} failed item${failures === 1 ? "" : "s"}`;
    tick();
  }

  function fact(term, value, cls) {
    return h("div", {}, h("dt", {}, term), h("dd", { class: cls }, value));
  }

  function tick() {
    if (!job) return;
    const { status, stats } = job;
    const failures = job.failures;
    replace(
      facts,
      fact("Done", `${count(status.progress ?? 0)} / ${count(status.total)}`),
      fact("Failures", count(failures), failures ? "bad" : undefined),
      fact("Items/s", status.status === "queued" ? "–" : rate(job.rate)),
      job.finished ? fact("Took", clock(job.runTime)) : fact("ETA", clock(job.eta)),
      fact("Age", span(job.age)),
      fact("Created", when(stats && stats.created_at)),
      fact("Started", when(stats && stats.started_at)),
      fact("Last change", when(stats && stats.updated_at)),
      fact("Finished", when(stats && stats.finished_at)),
    );
    const stalled = job.stalledFor;
    flag.hidden = stalled === null;
    flag.textContent = stalled === null ? "" : `no progress for ${span(stalled)}`;
  }

  async function load() {
    try {
      const body = await call("GET", path);
      job = ctx.remember(body.job_status, body.job_stats);
      document.title = `${body.job_status.job_type} ${shortId(id)} · joblot`;
      render();
      await Promise.all([loadResults({}), deliveries.refresh(job.finished)]);
    } catch (error) {
      ctx.fail(error);
    }
  }

  async function loadResults(page) {
    if (results.loading) return;
    results.loading = true;
    results.current = page;
    try {
      const query = { "page[size]": RESULTS_PAGE, "page[after]": page.after, "page[before]": page.before };
      if (results.failuresOnly) query.success = "false";
      const body = await call("GET", `${path}/results`, { query });
      replace(resultsBody, body.results.map(resultRow));
      results.after = body.meta.after_cursor;
      results.before = body.meta.before_cursor;
      next.disabled = !body.links.next;
      prev.disabled = !body.links.prev;
      const none = results.failuresOnly ? "No failed items." : "No results yet.";
      resultsNote.textContent = body.results.length ? (job && !job.finished ? "Results so far." : "") : none;
      resultsTable.hidden = body.results.length === 0;
    } catch (error) {
      ctx.fail(error);
    } finally {
      results.loading = false;
    }
  }

  function resultRow(entry) {
    const other = Object.fromEntries(Object.entries(entry).filter(([k]) => !ENTRY_KEYS.has(k)));
    const cell = (label, value, cls) => h("td", { dataset: { label }, class: cls }, value);
    return h(
      "tr",
      { class: entry.success ? "" : "failed", dataset: { index: entry.index } },
      cell("#", count(entry.index), "num"),
      cell("Item id", entry.id === undefined ? "–" : JSON.stringify(entry.id)),
      cell("Outcome", entry.success ? "ok" : "failed", entry.success ? "ok" : "bad"),
      cell("Error", entry.error ?? ""),
      cell("Details", entry.details ?? "", "details"),
      cell("Other", Object.keys(other).length ? JSON.stringify(other) : "", "mono other"),
    );
  }

  function onFilter() {
    results.failuresOnly = failuresOnly.checked;
    for (const button of exports) {
      const what = results.failuresOnly ? " failures" : "";
      button.textContent = `Export${what} ${button.dataset.format.toUpperCase()}`;
    }
    loadResults({});
  }

  async function retry() {
    const failures = count(job.failures);
    const ok = await ctx.confirm(
      "Retry the failed items?",
      `This submits a new ${job.status.job_type} job of the ${failures} failed items, as they were first submitted.`,
      "Retry them",
    );
    if (!ok) return;
    try {
      const body = await call("POST", `${path}/retry`);
      ctx.remember(body.job_status, body.job_stats);
      ctx.navigate(`#/jobs/${encodeURIComponent(body.job_status.id)}`);
    } catch (error) {
      ctx.fail(error);
    }
  }

  async function exportAs(format) {
    const query = { format, success: results.failuresOnly ? "false" : null };
    const part = results.failuresOnly ? "failures" : "results";
    try {
      await download(`${path}/results/export`, query, `job-${id}-${part}.${format}`);
    } catch (error) {
      ctx.fail(error);
    }
  }

  async function cancel() {
    const ok = await ctx.confirm(
      "Cancel this job?",
      "Items not yet started will never run; items running now still finish. The job ends failed.",
      "Cancel job",
    );
    if (!ok) return;
    try {
      const body = await call("POST", `${path}/cancel`);
      job = ctx.remember(body.job_status, body.job_stats);
      render();
      deliveries.refresh(true);
    } catch (error) {
      ctx.fail(error);
    }
  }

  load();
  return {
    el,
    title: "Job",
    onJob(changed) {
      if (changed.id !== id) return;
      const wasFinished = shownFinished; // `changed` may be `job` itself, already updated
      job = changed;
      render();
      if (!wasFinished && job.finished) {
        loadResults(results.current || {});
        deliveries.refresh(true);
      }
    },
    tick,
    destroy() {
      deliveries.close();
    },
  };
}
