// The daemon's HTTP API, as the console uses it: every call carries the token
// in the Authorization header (never a cookie: there is nothing for another
// site to forge), answers are JSON, errors keep the API's error shape.
//
// Operations this daemon may not have (an older daemon, or one built without
// an extension) answer 404 `not_found` from the router, or 405: `unsupported`
// tells the pages to say so instead of failing.

import { token } from "./session.js";

const API = document.querySelector('meta[name="eventstreamd-api"]').content;

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `the daemon answered HTTP ${status}`);
    this.status = status;
    this.code = (body && body.error_code) || "";
    this.requestId = (body && body.request_id) || "";
  }

  /** The daemon does not know this operation at all (as opposed to "no such integration"). */
  get unsupported() {
    return (this.status === 404 && this.code === "not_found") || this.status === 405;
  }
}

/** The daemon did not answer (stopped, restarting, network gone). */
export class Unreachable extends Error {
  constructor() {
    super("the daemon does not answer");
  }
}

let unauthorized = () => {};

/** What to do when the daemon refuses the token (the app returns to the prompt). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** One call. `bearer` overrides the stored token (the prompt checks a token before keeping it). */
export async function request(method, path, body, { bearer } = {}) {
  const headers = { Authorization: `Bearer ${bearer ?? token() ?? ""}` };
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  let text;
  try {
    response = await fetch(path, init);
    text = await response.text();
  } catch {
    throw new Unreachable();
  }
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.ok) return data;
  const error = new ApiError(response.status, data);
  if (response.status === 401 && bearer === undefined) unauthorized(error);
  throw error;
}

const one = (id) => `${API}/${encodeURIComponent(id)}`;
const rejected = (id, eventId) => `${one(id)}/rejected_events/${encodeURIComponent(eventId)}`;

export const api = {
  status: () => request("GET", "/status"),
  list: () => request("GET", API),
  get: (id) => request("GET", one(id)),
  create: (body) => request("POST", API, body),
  update: (id, body) => request("PATCH", one(id), body),
  remove: (id) => request("DELETE", one(id)),
  start: (id) => request("POST", `${one(id)}/_start`),
  stop: (id) => request("POST", `${one(id)}/_stop`),
  logs: (id) => request("GET", `${one(id)}/logs`),
  rejected: (id) => request("GET", `${one(id)}/rejected_events`),
  rejectedEvent: (id, eventId) => request("GET", rejected(id, eventId)),
  retryRejected: (id, eventId) => request("POST", `${rejected(id, eventId)}/_retry`),
  deleteRejected: (id, eventId) => request("DELETE", rejected(id, eventId)),
  rotateSecret: (id, body) => request("POST", `${one(id)}/_rotate_secret`, body),
  replay: (id, body) => request("POST", `${one(id)}/_replay`, body),
  replays: (id) => request("GET", `${one(id)}/replays`),
  cancelReplay: (id, replayId) =>
    request("DELETE", `${one(id)}/replays/${encodeURIComponent(replayId)}`),
};
