// What the create and edit forms hold: every field of a webhook and an S3
// integration, the extensions included, by its API name (a dotted path into
// the request body), and how a control's text becomes the API's value and back.
//
// Optional fields left empty (or at their default) are left out of the body,
// so a daemon without an extension never sees it, and an edit that clears a
// field drops it (a target object in a PATCH replaces the stored one).
// Secrets come back masked (each header value on its own); sent back unchanged,
// the daemon keeps the stored one.
//
// `unset` says what an optional field left out means (the daemon's default),
// for the integration's page (parameters.js); `term` is the label there when
// the form's label speaks of input.

import { isoToLocalInput, localInputToIso } from "./format.js";
import { FieldProblem, readField } from "./inputs.js";

const FILTER_HINT = "comma-separated; with neither filter every event is delivered";
const MASKED = "shown masked; left as shown, the stored one is kept";
const DEFAULT_KEY_TEMPLATE = "{key_prefix}/{tenant}/{timestamp}-data-{random}.export";

export const COMMON = [
  { name: "id", label: "Id", type: "text", required: true, immutable: true,
    hint: "lowercase letters, digits and dashes (erp-1); it cannot be changed later" },
  { name: "integration_type", label: "Type", type: "select", immutable: true,
    options: [["permanent", "permanent"], ["temporary", "temporary: delivers a range, then stops and is deleted"]] },
  { name: "starts_at", label: "Starts at (your local time)", term: "Starts at", type: "datetime",
    immutable: true,
    hint: "deliver from this time on (not in the future); required for temporary" },
  { name: "ends_at", label: "Ends at (your local time)", term: "Ends at", type: "datetime",
    immutable: true,
    hint: "temporary integrations only" },
  { name: "filter_conditions.event_filter", label: "Events", type: "list",
    placeholder: "order.created, return.processed", hint: FILTER_HINT, unset: "no filter" },
  { name: "filter_conditions.entity_filter", label: "Entities", type: "list",
    placeholder: "order, return", hint: "every event of these entities; " + FILTER_HINT,
    unset: "no filter" },
];

export const WEBHOOK = [
  { name: "callback_parameters.callback_url", label: "Callback URL", type: "text",
    required: true, inputmode: "url", placeholder: "https://hooks.example.com/events" },
  { name: "callback_parameters.api_key", label: "API key", type: "secret",
    hint: "sent as Authorization: Bearer <api key>; " + MASKED, unset: "none" },
  { name: "callback_parameters.signing_secret", label: "Signing secret", type: "secret",
    placeholder: "whsec_…",
    hint: "signs this integration's deliveries (Standard Webhooks) instead of " +
      "webhook.signing_secret; " + MASKED,
    unset: "none: webhook.signing_secret signs, if the daemon has one" },
  { name: "callback_parameters.headers", label: "Extra headers", type: "headers",
    placeholder: "X-Tenant: acme",
    hint: "one Name: value per line, at most 20; values are shown masked, and a value left " +
      "as shown keeps the stored one",
    unset: "none" },
  { name: "callback_parameters.max_rate", label: "Max rate (deliveries/s)", type: "number",
    hint: "at most this many deliveries per second, live and replay together; empty: no limit",
    unset: "no limit" },
  { name: "callback_parameters.ordered", label: "Deliver in sequence order", type: "checkbox",
    hint: "one request at a time, or one per ordering key",
    unset: "no: up to webhook.max_in_flight requests at once" },
  { name: "callback_parameters.ordering_key", label: "Ordering key", type: "text",
    placeholder: "order_id",
    hint: "a dot path into the payload (customer.id): same value in order, others in parallel",
    unset: "none" },
  { name: "callback_parameters.stop_after_failing", label: "Stop after failing for", type: "text",
    placeholder: "5d", hint: "a duration (12h, 5d); 0 = never; empty: webhook.stop_after_failing",
    unset: "webhook.stop_after_failing (the daemon's setting)" },
];

export const S3 = [
  { name: "s3_parameters.bucket", label: "Bucket", type: "text", required: true },
  { name: "s3_parameters.aws_region", label: "Region", type: "text", required: true,
    placeholder: "eu-west-1" },
  { name: "s3_parameters.key_prefix", label: "Key prefix", type: "text",
    placeholder: "events", hint: "objects go to <prefix>/<tenant>/…", unset: "none" },
  { name: "s3_parameters.aws_access_key_id", label: "Access key id", type: "text",
    required: true },
  { name: "s3_parameters.aws_secret_access_key", label: "Secret access key", type: "secret",
    required: true, hint: MASKED },
  { name: "s3_parameters.compression", label: "Compression", type: "select", omitWhen: "none",
    options: [["none", "none"], ["gzip", "gzip (.gz)"], ["zstd", "zstd (.zst)"]],
    unset: "none (default)" },
  { name: "s3_parameters.format", label: "Format", type: "select", omitWhen: "ndjson",
    options: [["ndjson", "NDJSON (one event per line)"], ["parquet", "Parquet"]],
    unset: "NDJSON (default: one event per line)" },
  { name: "s3_parameters.key_template", label: "Key template", type: "text",
    placeholder: DEFAULT_KEY_TEMPLATE,
    hint: "placeholders {key_prefix} {tenant} {timestamp} {random} {date} {hour} {first_seq} " +
      "{last_seq}; must hold {random} or {first_seq}",
    unset: `${DEFAULT_KEY_TEMPLATE} (default)` },
];

export const KINDS = {
  webhook: { title: "webhook", fields: WEBHOOK, target: "callback_parameters" },
  s3: { title: "S3 integration", fields: S3, target: "s3_parameters" },
};

/** The API value of one control's text (undefined: leave the field out). */
export function toApi(spec, raw) {
  if (spec.type === "checkbox") return raw ? true : undefined;
  if (raw === "") return spec.required ? "" : undefined;
  switch (spec.type) {
    case "number":
      return Number.isFinite(Number(raw)) ? Number(raw) : raw;
    case "list":
      return raw.split(",").map((item) => item.trim()).filter(Boolean);
    case "datetime":
      return localInputToIso(raw);
    case "headers":
      return parseHeaders(spec, raw);
    case "select":
      return raw === spec.omitWhen ? undefined : raw;
    default:
      return raw;
  }
}

/** The control's text for an API value. */
export function fromApi(spec, value) {
  if (value === undefined || value === null) return spec.type === "checkbox" ? false : "";
  switch (spec.type) {
    case "list":
      return value.join(", ");
    case "datetime":
      return isoToLocalInput(value);
    case "headers":
      return Object.entries(value).map(([name, text]) => `${name}: ${text}`).join("\n");
    default:
      return spec.type === "checkbox" ? Boolean(value) : String(value);
  }
}

function parseHeaders(spec, raw) {
  const headers = {};
  raw.split("\n").forEach((line, index) => {
    if (!line.trim()) return;
    const colon = line.indexOf(":");
    if (colon < 1) {
      throw new FieldProblem(spec.name, `line ${index + 1}: expected "Name: value"`);
    }
    headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  });
  return Object.keys(headers).length ? headers : undefined;
}

/** The request body the form's controls make (disabled ones left out). */
export function bodyFrom(fields) {
  const body = {};
  for (const f of fields) {
    if (f.spec.disabled) continue;
    const value = toApi(f.spec, readField(f));
    if (value !== undefined) setPath(body, f.spec.name, value);
  }
  return body;
}

export function getPath(object, path) {
  return path.split(".").reduce((value, key) => (value == null ? undefined : value[key]), object);
}

export function setPath(object, path, value) {
  const keys = path.split(".");
  let node = object;
  for (const key of keys.slice(0, -1)) node = node[key] ??= {};
  node[keys.at(-1)] = value;
}
