// What the page knows about jobs: the latest JobStatus and job_stats of each, merged from
// list pages and the event stream, and what is worked out from them (rate, ETA, stalled).

import { serverNow } from "./api.js";

export const STALL_MS = 60_000; // a working job whose progress has not moved for this long
const RATE_WINDOW_MS = 15_000; // items/s of a running job: over its last changes
const FINISHED = new Set(["completed", "failed"]);
const RANK = { queued: 0, working: 1, failed: 2, completed: 2 };

export function finished(status) {
  return FINISHED.has(status.status);
}

function time(iso) {
  const t = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(t) ? null : t;
}

/** Whether `next` is not older than `known` (an event and a list page can cross). */
function newer(known, next) {
  const a = known.stats && time(known.stats.updated_at);
  const b = next.stats && time(next.stats.updated_at);
  if (a !== null && a !== undefined && b !== null && b !== undefined) return b >= a;
  const rank = RANK[next.status.status] - RANK[known.status.status];
  if (rank !== 0) return rank > 0;
  return (next.status.progress ?? 0) >= (known.status.progress ?? 0);
}

/** A job as the page shows it. */
export class Job {
  constructor(status, stats) {
    this.status = status;
    this.stats = stats || null;
    this.samples = []; // [ms, progress] as seen here, for the rate of a running job
    this.seenChange = Date.now();
    this.sample();
  }

  get id() {
    return this.status.id;
  }

  /** Take a newer status (and stats); false if it was older than what is known. */
  update(status, stats) {
    const next = { status, stats: stats || null };
    if (!newer(this, next)) return false;
    if (status.progress !== this.status.progress || status.status !== this.status.status) {
      this.seenChange = Date.now();
    }
    this.status = { ...status, results: status.results ?? this.status.results };
    this.stats = next.stats || this.stats;
    this.sample();
    return true;
  }

  sample() {
    const now = Date.now();
    const progress = this.status.progress ?? 0;
    const last = this.samples[this.samples.length - 1];
    if (!last || last[1] !== progress) this.samples.push([now, progress]);
    while (this.samples.length > 2 && now - this.samples[0][0] > RATE_WINDOW_MS) {
      this.samples.shift();
    }
  }

  get finished() {
    return finished(this.status);
  }

  get failures() {
    return this.stats ? this.stats.failures : null;
  }

  /** Items per second: recent changes while it runs, else its whole run. */
  get rate() {
    const progress = this.status.progress ?? 0;
    if (!this.finished && this.samples.length >= 2) {
      const [t0, p0] = this.samples[0];
      const [t1, p1] = this.samples[this.samples.length - 1];
      const live = Date.now() - t1 < RATE_WINDOW_MS;
      if (t1 - t0 >= 1000 && live) return ((p1 - p0) * 1000) / (t1 - t0);
    }
    const started = this.stats && time(this.stats.started_at);
    if (!started || !progress) return null;
    const end = this.finished ? time(this.stats.finished_at) || serverNow() : serverNow();
    return end > started ? (progress * 1000) / (end - started) : null;
  }

  /** Milliseconds until every item is done at the current rate, or null. */
  get eta() {
    if (this.finished || this.status.status !== "working") return null;
    const rate = this.rate;
    const left = (this.status.total ?? 0) - (this.status.progress ?? 0);
    return rate && left >= 0 ? (left * 1000) / rate : null;
  }

  /** From its first claim to its end (or now), or null. */
  get runTime() {
    const started = this.stats && time(this.stats.started_at);
    if (!started) return null;
    const end = (this.finished && time(this.stats.finished_at)) || serverNow();
    return end - started;
  }

  /** How long ago it was created (from job_stats), or null. */
  get age() {
    const created = this.stats && time(this.stats.created_at);
    return created ? serverNow() - created : null;
  }

  /** How long its progress has not moved, when that is long enough to worry: a working job
   *  silent for STALL_MS, or a queued job no worker took for as long. Else null. */
  get stalledFor() {
    if (this.finished) return null;
    const changed = this.stats ? time(this.stats.updated_at) : null;
    const quiet = changed ? serverNow() - changed : Date.now() - this.seenChange;
    return quiet >= STALL_MS ? quiet : null;
  }

  get createdAt() {
    return (this.stats && time(this.stats.created_at)) || 0;
  }

  get endedAt() {
    return (this.stats && time(this.stats.finished_at)) || this.seenChange;
  }
}

/** Listing order, as the API lists: unfinished first, newest first; then finished ones,
 *  most recently finished first. Ids are ordered by creation time, so they break ties. */
export function compareJobs(a, b) {
  if (a.finished !== b.finished) return a.finished ? 1 : -1;
  const ended = a.finished ? b.endedAt - a.endedAt : 0;
  if (ended) return ended;
  const created = b.createdAt - a.createdAt;
  if (created) return created;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}
