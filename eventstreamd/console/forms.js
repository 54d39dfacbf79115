// The create and edit forms for webhook and S3 integrations.
//
// The daemon validates; the form shows its message at the field the message
// names (inputs.js), or above the buttons when it names none. `novalidate`
// keeps the browser's own checks from pre-empting the daemon's wording. An
// edit sends only what may change (the id, type and dates are fixed after
// creation) and needs the integration stopped, as the API does.

import { api, Unreachable } from "./api.js";
import { fill, h } from "./dom.js";
import { bodyFrom, COMMON, fromApi, getPath, KINDS } from "./fields.js";
import { field, FieldProblem, formErrorSlot, showError, tryBuild, writeField } from "./inputs.js";
import { go, href } from "./router.js";

export function mountForm(main, { route }) {
  const editing = route.page === "edit";
  const page = h("section", { class: "page form-page" });
  fill(main, page);
  if (!editing) {
    render(page, { kind: route.kind, integration: null });
    return {};
  }
  fill(page, h("p", { class: "muted", text: "Loading…" }));
  api.get(route.id).then(
    (integration) => render(page, { kind: kindOf(integration), integration }),
    (error) => fill(page, crumbs(route.id), h("p", { class: "form-error", role: "alert",
      text: error instanceof Unreachable ? "The daemon does not answer." : error.message })),
  );
  return {};
}

function kindOf(integration) {
  return Object.keys(KINDS).find((kind) => integration[KINDS[kind].target]) || "webhook";
}

function crumbs(id, label) {
  return h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
    h("a", { href: href.list(), text: "Integrations" }), " / ",
    id ? h("a", { href: href.detail(id), class: "mono", text: id }) : null,
    label ? (id ? " / " : "") + label : null);
}

function render(page, { kind, integration }) {
  const editing = integration !== null;
  const { title, fields: targetSpecs } = KINDS[kind];
  const locked = (spec) => ({ ...spec, disabled: editing && spec.immutable });
  const common = COMMON.map((spec) => field(locked(spec)));
  const target = targetSpecs.map((spec) => field(spec));
  const fields = [...common, ...target];
  const formError = formErrorSlot();
  const submit = h("button", { type: "submit", text: editing ? "Save changes" : `Create ${title}` });
  const form = h("form", { novalidate: true, "aria-label": editing ? `Edit ${integration.id}` : `New ${title}` },
    h("fieldset", {}, h("legend", { text: "Integration" }), common.map((f) => f.row)),
    h("fieldset", {}, h("legend", { text: kind === "s3" ? "S3 target" : "Webhook target" }),
      target.map((f) => f.row)),
    formError,
    h("div", { class: "actions" }, submit,
      h("a", { class: "button quiet", href: editing ? href.detail(integration.id) : href.list(),
        text: "Cancel" })));

  if (editing) {
    for (const f of fields) writeField(f, fromApi(f.spec, getPath(integration, f.spec.name)));
  }
  const heading = editing
    ? h("h1", {}, "Edit ", h("span", { class: "mono", text: integration.id }))
    : h("h1", { text: `New ${title}` });
  const switcher = editing ? null : h("p", { class: "muted" }, "Or create ",
    h("a", { href: href.create(kind === "s3" ? "webhook" : "s3"),
      text: kind === "s3" ? "a webhook" : "an S3 integration" }), " instead.");
  const running = editing && integration.status === "running"
    ? h("p", { class: "notice" }, "This integration is running; the daemon accepts changes only " +
      "while it is stopped. Stop it on its page first.")
    : null;
  fill(page, crumbs(editing ? integration.id : null, editing ? "Edit" : `New ${title}`),
    heading, switcher, running, form);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = tryBuild(fields, formError, () => requestBody(fields, integration));
    if (!body) return;
    submit.disabled = true;
    try {
      const saved = editing ? await api.update(integration.id, body) : await api.create(body);
      go(href.detail(saved.id));
    } catch (error) {
      if (error instanceof Unreachable) {
        formError.textContent = editing
          ? "The daemon does not answer; nothing was changed."
          : "The daemon does not answer; check the list before trying again.";
        formError.hidden = false;
      } else {
        showError(error, fields, formError);
      }
    } finally {
      submit.disabled = false;
    }
  });
  (editing ? target[0] : common[0]).control.focus();
}

function requestBody(fields, integration) {
  const body = bodyFrom(fields);
  if (integration && integration.filter_conditions && !body.filter_conditions) {
    throw new FieldProblem("filter_conditions.event_filter", "an update cannot remove the " +
      "filter; give events or entities, or delete the integration and create it again");
  }
  return body;
}
