// The token prompt: the only thing shown before a token is known. It reads
// nothing from the daemon until the user gives a token, then checks that one
// token with `GET /status` before keeping it.

import { ApiError, request, Unreachable } from "./api.js";
import { fill, h } from "./dom.js";
import { clearErrors, field, formErrorSlot, showFieldError } from "./inputs.js";

export function mountPrompt(main, { message, onToken }) {
  const tokenField = field({ name: "token", label: "API token", type: "secret", required: true,
    hint: "auth.tokens in the daemon's config, or the file {data_dir}/api_token. It stays in " +
      "this tab and is sent only in the Authorization header." });
  const formError = formErrorSlot();
  const submit = h("button", { type: "submit", text: "Open the console" });
  const form = h("form", { class: "prompt", novalidate: true, "aria-label": "Sign in" },
    h("h1", { text: "eventstreamd console" }),
    message ? h("p", { class: "notice notice-error", role: "alert", text: message }) : null,
    tokenField.row, formError, h("div", { class: "actions" }, submit),
    h("p", { class: "muted small" }, "A link can carry it too: ",
      h("code", { text: "/ui/#token=<token>" }),
      " (the part after # never reaches the server; the console removes it from the address bar)."));
  fill(main, h("section", { class: "page prompt-page" }, form));
  tokenField.control.focus();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors([tokenField], formError);
    const token = tokenField.control.value.trim();
    if (!token) {
      showFieldError(tokenField, "Enter the API token.");
      return;
    }
    submit.disabled = true;
    try {
      await request("GET", "/status", undefined, { bearer: token });
      onToken(token);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        showFieldError(tokenField, "The daemon refused this token.");
      } else {
        showFieldError(tokenField, error instanceof Unreachable
          ? "The daemon does not answer; try again when it runs." : error.message);
      }
      tokenField.control.focus();
    } finally {
      submit.disabled = false;
    }
  });
  return {};
}
