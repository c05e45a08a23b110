// Building the page: elements from plain data, and how numbers and times read.
//
// Every value from a job, an item or a result reaches the page as text (a text node or
// textContent), never as HTML: nothing here writes innerHTML, and the page's
// Content-Security-Policy (Trusted Types) makes any such write throw.

/** An element: h("td", {class: "num", dataset: {label: "Done"}}, "12", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof el[key] !== "function" && key !== "list") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

/** Append children: elements as they are, anything else as text. */
export function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

/** 12,345 (or "–" for nothing). */
export function count(n) {
  return n === null || n === undefined ? "–" : integer.format(n);
}

/** Items per second: "1,234/s", "0.5/s", or "–". */
export function rate(perSecond) {
  if (!perSecond || !Number.isFinite(perSecond)) return "–";
  return `${(perSecond >= 10 ? integer : decimal).format(perSecond)}/s`;
}

/** A short span of time: "45s", "12m", "3h", "2d". */
export function span(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** A precise span for an ETA or a run time: "0:07", "12:04", "1:02:03". */
export function clock(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  const s = Math.max(0, Math.round(ms / 1000));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const seconds = String(s % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${seconds}` : `${minutes}:${seconds}`;
}

/** An RFC 3339 time in the reader's time zone: "14:03:27" today, else "2026-12-01 14:03". */
export function when(iso) {
  if (!iso) return "–";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  const two = (n) => String(n).padStart(2, "0");
  const day = `${t.getFullYear()}-${two(t.getMonth() + 1)}-${two(t.getDate())}`;
  const today = new Date();
  const sameDay = t.toDateString() === today.toDateString();
  const hm = `${two(t.getHours())}:${two(t.getMinutes())}`;
  return sameDay ? `${hm}:${two(t.getSeconds())}` : `${day} ${hm}`;
}

/** The first characters of a job id, enough to tell jobs apart on screen. */
export function shortId(id) {
  return String(id).slice(0, 12);
}

/** A status badge. */
export function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}
