// The job list: filter by status and type, one row per job with its progress bar, updated
// live from the tenant's event stream, and "cancel everything this filter matches".

import { call } from "./api.js";
import { compareJobs } from "./jobs.js";
import { badge, count, h, rate, replace, shortId, span } from "./dom.js";

const PAGE_SIZE = 50;
export const STATUS_FILTERS = [
  ["", "All statuses"],
  ["queued,working", "Unfinished"],
  ["queued", "Queued"],
  ["working", "Working"],
  ["completed", "Completed"],
  ["failed", "Failed"],
];
const UNFINISHED = ["queued", "working"];

/** The list view for the filters in `params` (status, type). */
export function listView(ctx, params) {
  const filter = { status: params.get("status") || "", type: params.get("type") || "" };
  const statuses = filter.status ? filter.status.split(",") : [];
  const rows = new Map(); // job id -> {job, tr, cells}
  let cursor = null;
  let loading = false;

  const statusSelect = h(
    "select",
    { id: "filter-status", "aria-label": "Status", onchange: applyFilters },
    STATUS_FILTERS.map(([value, label]) => h("option", { value, selected: value === filter.status }, label)),
  );
  const typeInput = h("input", {
    id: "filter-type",
    type: "search",
    placeholder: "Job type",
    "aria-label": "Job type",
    value: filter.type,
    list: "job-types",
    onchange: applyFilters,
  });
  const types = h("datalist", { id: "job-types" });
  const summary = h("p", { class: "muted summary" });
  const bulk = h("button", { type: "button", class: "danger", hidden: true, onclick: cancelMatching }, "Cancel matching…");
  const tbody = h("tbody");
  const more = h("button", { type: "button", hidden: true, onclick: () => load() }, "Load more");
  const empty = h("p", { class: "empty", hidden: true }, "No jobs match.");
  const table = h(
    "table",
    { class: "jobs" },
    h(
      "thead",
      {},
      h("tr", {}, ["Job", "Type", "Status", "Progress", "Done", "Failures", "Items/s", "Age"].map((t) => h("th", { scope: "col" }, t))),
    ),
    tbody,
  );
  const el = h(
    "section",
    { class: "list" },
    h(
      "form",
      { class: "filters", onsubmit: (e) => { e.preventDefault(); applyFilters(); } },
      statusSelect,
      typeInput,
      types,
      h("button", { type: "button", class: "link", onclick: () => ctx.navigate("#/") }, "Clear"),
    ),
    h("div", { class: "bar" }, summary, bulk),
    table,
    empty,
    more,
  );

  function applyFilters() {
    const next = new URLSearchParams();
    if (statusSelect.value) next.set("status", statusSelect.value);
    if (typeInput.value.trim()) next.set("type", typeInput.value.trim());
    const qs = next.toString();
    ctx.navigate(qs ? `#/?${qs}` : "#/");
  }

  function matches(job) {
    if (statuses.length && !statuses.includes(job.status.status)) return false;
    return !filter.type || job.status.job_type === filter.type;
  }

  function listQuery(after, only = filter.status) {
    return {
      "page[size]": PAGE_SIZE,
      "page[after]": after,
      status: only,
      job_type: filter.type,
    };
  }

  async function load() {
    if (loading) return;
    loading = true;
    more.disabled = true;
    try {
      const body = await call("GET", "job_statuses", { query: listQuery(cursor) });
      const stats = body.job_stats || {};
      for (const status of body.job_statuses) ctx.remember(status, stats[status.id]);
      for (const status of body.job_statuses) show(ctx.jobs.get(status.id));
      cursor = body.meta.after_cursor;
      more.hidden = !body.meta.has_more;
      refresh();
    } catch (error) {
      ctx.fail(error);
    } finally {
      loading = false;
      more.disabled = false;
    }
  }

  function show(job) {
    if (!job || !matches(job)) return;
    let row = rows.get(job.id);
    if (!row) {
      row = makeRow(job);
      rows.set(job.id, row);
      types.append(h("option", { value: job.status.job_type }));
    }
    updateRow(row, job);
    place(row);
  }

  function place(row) {
    const ordered = [...rows.values()].sort((a, b) => compareJobs(a.job, b.job));
    const index = ordered.indexOf(row);
    const after = ordered[index + 1];
    const target = after ? after.tr : null;
    if (row.tr.nextSibling !== target || row.tr.parentNode !== tbody) tbody.insertBefore(row.tr, target);
  }

  function makeRow(job) {
    const cell = (label, ...children) => h("td", { dataset: { label } }, ...children);
    const cells = {
      link: h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono" }, shortId(job.id)),
      type: h("span", { class: "type" }),
      status: h("span"),
      flag: h("span", { class: "flag", hidden: true }),
      bar: h("progress", { max: 1, value: 0 }),
      done: h("span", { class: "num" }),
      failures: h("span", { class: "num" }),
      rate: h("span", { class: "num" }),
      age: h("span", { class: "num" }),
    };
    const tr = h(
      "tr",
      { dataset: { jobId: job.id } },
      cell("Job", cells.link),
      cell("Type", cells.type),
      cell("Status", cells.status, " ", cells.flag),
      cell("Progress", cells.bar),
      cell("Done", cells.done),
      cell("Failures", cells.failures),
      cell("Items/s", cells.rate),
      cell("Age", cells.age),
    );
    return { job, tr, cells };
  }

  function updateRow(row, job) {
    const { status } = job;
    row.job = job;
    row.cells.type.textContent = status.job_type;
    row.cells.type.title = status.job_type;
    replace(row.cells.status, badge(status.status));
    row.cells.status.title = status.message ?? "";
    row.cells.bar.max = Math.max(status.total ?? 1, 1);
    row.cells.bar.value = status.progress ?? 0; // 0 while queued
    row.cells.done.textContent = `${count(status.progress ?? 0)} / ${count(status.total)}`;
    const failures = job.failures;
    row.cells.failures.textContent = count(failures);
    row.cells.failures.classList.toggle("bad", Boolean(failures));
    tickRow(row);
  }

  function tickRow(row) {
    const { job } = row;
    row.cells.rate.textContent = job.finished || job.status.status === "working" ? rate(job.rate) : "–";
    row.cells.age.textContent = span(job.age);
    const stalled = job.stalledFor;
    row.tr.classList.toggle("stalled", stalled !== null);
    row.cells.flag.hidden = stalled === null;
    row.cells.flag.textContent = stalled === null ? "" : `no progress for ${span(stalled)}`;
    row.cells.flag.title = "Nothing has moved for a while: is a worker running this job type?";
  }

  function refresh() {
    const all = [...rows.values()];
    const open = all.filter((r) => !r.job.finished).length;
    empty.hidden = all.length > 0;
    table.hidden = all.length === 0;
    summary.textContent = `${count(all.length)} job${all.length === 1 ? "" : "s"} shown, ${count(open)} unfinished`;
    const canCancel = !statuses.length || statuses.some((s) => UNFINISHED.includes(s));
    bulk.hidden = !canCancel || open === 0;
  }

  async function cancelMatching() {
    const only = (statuses.length ? statuses.filter((s) => UNFINISHED.includes(s)) : UNFINISHED).join(",");
    const what = filter.type ? `${only.replace(",", " or ")} ${filter.type} jobs` : `${only.replace(",", " or ")} jobs`;
    const ok = await ctx.confirm(
      "Cancel every matching job?",
      `This cancels all ${what}, on every page, not only those shown. Items not yet started will never run.`,
      "Cancel them",
    );
    if (!ok) return;
    let cancelled = 0;
    let skipped = 0;
    let after = null;
    try {
      do {
        const body = await call("GET", "job_statuses", { query: listQuery(after, only) });
        for (const status of body.job_statuses) {
          try {
            const answer = await call("POST", `job_statuses/${encodeURIComponent(status.id)}/cancel`);
            ctx.remember(answer.job_status, answer.job_stats);
            cancelled += 1;
          } catch (error) {
            if (error.status !== 409) throw error; // 409: it finished meanwhile
            skipped += 1;
          }
        }
        after = body.meta.has_more ? body.meta.after_cursor : null;
      } while (after);
      ctx.notice(`Cancelled ${count(cancelled)} job${cancelled === 1 ? "" : "s"}${skipped ? ` (${skipped} had finished meanwhile)` : ""}.`);
    } catch (error) {
      ctx.fail(error);
    }
  }

  load();
  return {
    el,
    title: "Jobs",
    onJob(job) {
      if (matches(job)) show(job);
      else if (rows.has(job.id)) {
        rows.get(job.id).tr.remove();
        rows.delete(job.id);
      }
      refresh();
    },
    tick() {
      for (const row of rows.values()) tickRow(row);
    },
    destroy() {},
  };
}
