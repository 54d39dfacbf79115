// Labelled form controls, and the API's validation messages shown at the field
// they name.
//
// The daemon's 400 messages name the offending field as a quoted dotted path
// ('callback_parameters.callback_url' ...). The first quoted name that matches
// a control of the form (exactly, else the longest control name it starts
// with, as 'callback_parameters.headers.X-Foo' belongs to the headers box)
// gets the message; a message that names none is shown for the whole form.

import { h, uid } from "./dom.js";

/**
 * One control with its label, hint and error slot.
 * spec: {name, label, type: text|secret|number|select|checkbox|datetime|textarea|headers|list,
 *        hint, required, options, placeholder, readonly, disabled, inputmode}
 */
export function field(spec) {
  const id = uid("f");
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  const control = makeControl(spec, id);
  control.setAttribute("aria-describedby", spec.hint ? `${hintId} ${errorId}` : errorId);
  // A required field's asterisk comes from CSS: the control's `required` tells assistive
  // technology, and the label's text stays the field's name.
  const label = h("label", { for: id, class: spec.required ? "required" : null, text: spec.label });
  const hint = spec.hint ? h("p", { class: "hint", id: hintId, text: spec.hint }) : null;
  const error = h("p", { class: "field-error", id: errorId, hidden: true });
  const row = spec.type === "checkbox"
    ? h("div", { class: "field check" }, control, label, hint, error)
    : h("div", { class: "field" }, label, control, hint, error);
  return { spec, row, control, error };
}

function makeControl(spec, id) {
  const common = {
    id, name: spec.name, required: spec.required, readonly: spec.readonly,
    disabled: spec.disabled, placeholder: spec.placeholder, inputmode: spec.inputmode,
    autocomplete: "off", spellcheck: "false",
  };
  switch (spec.type) {
    case "select":
      return h("select", common,
        spec.options.map(([value, text]) => h("option", { value, text })));
    case "checkbox":
      return h("input", { ...common, type: "checkbox" });
    case "textarea":
    case "headers":
      return h("textarea", { ...common, rows: spec.rows || 3 });
    case "number":
      return h("input", { ...common, type: "number", step: "any", min: "0" });
    case "datetime":
      return h("input", { ...common, type: "datetime-local", step: "1" });
    case "secret":
      return h("input", { ...common, type: "password", autocomplete: "new-password" });
    default:
      return h("input", { ...common, type: "text" });
  }
}

export function readField(f) {
  return f.spec.type === "checkbox" ? f.control.checked : f.control.value.trim();
}

export function writeField(f, value) {
  if (f.spec.type === "checkbox") f.control.checked = Boolean(value);
  else f.control.value = value ?? "";
}

export function showFieldError(f, message) {
  f.error.textContent = message;
  f.error.hidden = false;
  f.control.setAttribute("aria-invalid", "true");
}

export function clearErrors(fields, formError) {
  for (const f of fields) {
    f.error.textContent = "";
    f.error.hidden = true;
    f.control.removeAttribute("aria-invalid");
  }
  formError.textContent = "";
  formError.hidden = true;
}

/** A value the user typed that cannot be sent as it is; shown at the field it names. */
export class FieldProblem extends Error {
  constructor(name, message) {
    super(message);
    this.field = name;
  }
}

/** Clear the form's errors and build its request; a FieldProblem is shown at its field
 * and gives null. */
export function tryBuild(fields, formError, build) {
  clearErrors(fields, formError);
  try {
    return build();
  } catch (problem) {
    if (!(problem instanceof FieldProblem)) throw problem;
    const target = fields.find((f) => f.spec.name === problem.field);
    showFieldError(target, problem.message);
    target.control.focus();
    return null;
  }
}

export function formErrorSlot() {
  return h("p", { class: "form-error", role: "alert", hidden: true });
}

/** The control an API message names, or null. */
export function fieldNamed(message, fields) {
  for (const match of String(message).matchAll(/'([A-Za-z0-9_.-]+)'/g)) {
    const named = match[1];
    const exact = fields.find((f) => f.spec.name === named);
    if (exact) return exact;
    const containing = fields
      .filter((f) => named.startsWith(`${f.spec.name}.`))
      .sort((a, b) => b.spec.name.length - a.spec.name.length)[0];
    if (containing) return containing;
  }
  return null;
}

/** Show an error at the field it names (and focus that field), else for the whole form. */
export function showError(error, fields, formError) {
  const target = fieldNamed(error.message, fields.filter((f) => !f.spec.disabled));
  if (target) {
    showFieldError(target, error.message);
    target.control.focus();
    return;
  }
  formError.textContent = error.message;
  formError.hidden = false;
}
