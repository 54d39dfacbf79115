// How numbers, ages and states read: the same rules as the terminal dashboard
// (eventstreamd/tui/format.py), so both show the same figures.

// Health: a colour (by CSS class) and a symbol, so the state reads without colour too.
export const HEALTH = {
  ok: ["●", "ok"],
  lagging: ["▲", "lagging"],
  failing: ["✖", "failing"],
  stopped: ["■", "stopped"],
  completed: ["✔", "completed"],
  "auto-stopped": ["■", "auto-stopped"],
};

export const NONE = "–";

export function healthLabel(health) {
  const [symbol, word] = HEALTH[health] || ["?", health || "unknown"];
  return `${symbol} ${word}`;
}

export function healthClass(health) {
  return `health health-${HEALTH[health] ? health : "unknown"}`;
}

/** Whether the daemon stopped this integration itself (its deliveries kept failing), and
 * it has not run since. */
export function autoStopped(item) {
  return Boolean(item && item.auto_stopped && item.status === "stopped");
}

/** An integration's status as shown: a stop the daemon made reads apart from a user's. */
export function statusText(item) {
  return autoStopped(item) ? "stopped by the daemon" : item.status;
}

/** An integration's health as shown (the same distinction). */
export function shownHealth(item) {
  return autoStopped(item) && item.health === "stopped" ? "auto-stopped" : item?.health;
}

/** How an integration paces and orders its deliveries, in a few words (the list's Mode). */
export function mode(item) {
  const parts = [];
  if (item.max_rate) parts.push(`≤ ${number(item.max_rate)}/s`);
  if (item.ordering) parts.push(item.ordering === "strict" ? "in order" : "in order by key");
  return parts.length ? parts.join(", ") : NONE;
}

/** The rate limit, in words (an integration's page). */
export function maxRateText(maxRate) {
  return maxRate ? `${number(maxRate)} deliveries/s at most` : "no limit";
}

/** The order mode, in words: the status's `ordering` is "strict", "key <path>" or null. */
export function orderText(ordering) {
  if (ordering === "strict") return "in sequence order, one request at a time";
  if (ordering) return `in sequence order per value of ${ordering.replace(/^key /, "")}`;
  return "any order (up to webhook.max_in_flight requests at once)";
}

/** A number as typed: 5, 0.5, 2.25 (no trailing zeros, no grouping). */
function number(value) {
  return String(Number(value));
}

/** Which daemon delivers an integration (JetStream clusters only). */
export function ownerText(item, snapshot) {
  if (!item.owner) return "no daemon yet";
  return item.owner === snapshot.cluster.instance ? `${item.owner} (this daemon)` : item.owner;
}

export function count(value) {
  return value === null || value === undefined ? NONE : Number(value).toLocaleString("en-US");
}

export function plural(n, word) {
  return `${count(n)} ${word}${n === 1 ? "" : "s"}`;
}

export function rate(value) {
  if (value === null || value === undefined) return NONE;
  if (value >= 10000) return `${(value / 1000).toFixed(0)}k/s`;
  if (value >= 1000) return `${(value / 1000).toFixed(1)}k/s`;
  return `${value.toFixed(1)}/s`;
}

export function age(seconds) {
  if (seconds === null || seconds === undefined) return NONE;
  const whole = Math.floor(seconds);
  if (whole < 60) return seconds < 10 ? `${seconds.toFixed(1)}s` : `${whole}s`;
  const minutes = Math.floor(whole / 60);
  const pad = (n) => String(n).padStart(2, "0");
  if (minutes < 60) return `${minutes}m${pad(whole % 60)}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h${pad(minutes % 60)}m`;
  return `${Math.floor(hours / 24)}d${pad(hours % 24)}h`;
}

export function size(value) {
  if (value === null || value === undefined) return NONE;
  let amount = value;
  for (const unit of ["B", "KiB", "MiB", "GiB"]) {
    if (amount < 1024 || unit === "GiB") {
      return unit === "B" ? `${amount} B` : `${amount.toFixed(1)} ${unit}`;
    }
    amount /= 1024;
  }
  return `${value} B`;
}

/** An RFC 3339 time from the API, in the browser's local time (the raw value stays in title). */
export function when(iso) {
  if (!iso) return NONE;
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime()) ? String(iso) : moment.toLocaleString();
}

/** A `datetime-local` input's value as RFC 3339 UTC, or undefined when empty. */
export function localInputToIso(value) {
  if (!value) return undefined;
  const moment = new Date(value);
  return Number.isNaN(moment.getTime()) ? value : moment.toISOString();
}

/** An RFC 3339 time as a `datetime-local` input's value (local time, to the second). */
export function isoToLocalInput(iso) {
  if (!iso) return "";
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${moment.getFullYear()}-${pad(moment.getMonth() + 1)}-${pad(moment.getDate())}` +
    `T${pad(moment.getHours())}:${pad(moment.getMinutes())}:${pad(moment.getSeconds())}`;
}
