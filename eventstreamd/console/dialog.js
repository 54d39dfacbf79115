// Confirmation before an action that cannot be undone: a modal <dialog>
// (focus stays inside, Escape cancels), resolved with true or false.

import { h } from "./dom.js";

export function confirmAction(message, confirmLabel) {
  return new Promise((resolve) => {
    const cancel = h("button", { type: "button", class: "quiet", text: "Cancel" });
    const confirm = h("button", { type: "button", class: "danger", text: confirmLabel });
    const dialog = h("dialog", { class: "confirm", "aria-label": confirmLabel },
      h("p", { text: message }), h("div", { class: "actions" }, cancel, confirm));
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancel.addEventListener("click", () => close(false));
    confirm.addEventListener("click", () => close(true));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}
