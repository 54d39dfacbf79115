// An integration's parameters on its page: what the API returns (secrets
// masked, each header value on its own), each under the label its form gives
// it, with the API's name in the tooltip.
//
// An optional field left out is shown with what that means (the field's
// `unset`, the daemon's default, greyed), so the page answers "is there a rate
// limit, an order, a signing secret of its own, which file format" without the
// reader knowing the defaults. Fields the form does not know (a newer daemon's
// extension) follow under their API names, so nothing the API returns is hidden.

import { h } from "./dom.js";
import { COMMON, getPath, KINDS } from "./fields.js";
import { NONE, when } from "./format.js";

const ELSEWHERE = new Set(["id", "status"]); // the page's title and its live figures

/** <dt>/<dd> pairs for a <dl>. */
export function parameterRows(integration) {
  const kind = Object.values(KINDS).find((k) => integration[k.target]);
  const specs = [...COMMON.filter((spec) => !ELSEWHERE.has(spec.name)), ...(kind ? kind.fields : [])];
  const rows = [];
  for (const spec of specs) {
    const value = getPath(integration, spec.name);
    const absent = value === undefined || value === null || value === false;
    if (absent && spec.type === "datetime") continue; // a permanent integration's range
    rows.push(term(spec.term ?? spec.label, spec.name),
      absent ? h("dd", { class: "muted", text: spec.unset ?? NONE })
        : h("dd", { class: "mono pre", text: shown(spec, value) }));
  }
  const known = new Set([...specs.map((spec) => spec.name), ...ELSEWHERE]);
  const walk = (value, path) => {
    if (known.has(path)) return;
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) walk(inner, path ? `${path}.${key}` : key);
      return;
    }
    rows.push(term(path, path), h("dd", { class: "mono pre",
      text: value === null || value === undefined ? NONE : shown({}, value) }));
  };
  walk(integration, "");
  return rows;
}

function term(label, name) {
  return h("dt", { title: name, text: label });
}

/** A value as text: lists comma-separated, headers one per line, times in local time,
 * a choice by its option's words. */
function shown(spec, value) {
  if (Array.isArray(value)) return value.join(", ");
  if (value && typeof value === "object") {
    return Object.entries(value).map(([name, inner]) => `${name}: ${inner}`).join("\n");
  }
  switch (spec.type) {
    case "checkbox":
      return value ? "yes" : "no";
    case "datetime":
      return `${when(value)} (${value})`;
    case "select":
      return (spec.options.find(([option]) => option === value) ?? [value, String(value)])[1];
    default:
      return String(value);
  }
}
