// The console's entry point: the token, the pages and the live status line.
//
// Without a token only the prompt is shown and nothing is read from the daemon.
// With one, the page named by the fragment is mounted and the shared /status
// poll feeds it; a 401 from any call forgets the token and returns to the
// prompt (which brings the user back to the same page).

import { onUnauthorized, api } from "./api.js";
import { setText } from "./dom.js";
import { mountDetail } from "./detail.js";
import { mountForm } from "./forms.js";
import { mountList } from "./list.js";
import { Live } from "./live.js";
import { mountPrompt } from "./prompt.js";
import { parseRoute } from "./router.js";
import { forgetToken, setToken, takeTokenFromFragment, token } from "./session.js";

const PAGES = { list: mountList, detail: mountDetail, create: mountForm, edit: mountForm };

const main = document.getElementById("main");
const connection = document.getElementById("connection");
const forgetButton = document.getElementById("forget-token");
const live = new Live(api.status);
let page = null;

function unmount() {
  if (page && page.unmount) page.unmount();
  page = null;
}

function showPrompt(message) {
  live.stop();
  unmount();
  forgetButton.hidden = true;
  connection.textContent = "";
  connection.className = "connection";
  page = mountPrompt(main, {
    message,
    onToken(value) {
      setToken(value);
      route();
    },
  });
}

function route() {
  takeTokenFromFragment();
  if (!token()) {
    showPrompt();
    return;
  }
  unmount();
  forgetButton.hidden = false;
  const current = parseRoute(location.hash);
  page = PAGES[current.page](main, { route: current, live });
  if (live.snapshot || live.failure) page.update?.(live);
  live.start();
}

function showConnection(state) {
  if (state.failure) {
    connection.className = "connection connection-down";
    setText(connection, `✖ ${state.failure.message} since ${state.failure.since.toLocaleTimeString()}; ` +
      "retrying every second. The figures are the last ones received.");
  } else if (state.updatedAt) {
    // The text changes only when the connection does (it is a live region);
    // the time of the last update goes in the tooltip.
    connection.className = "connection connection-up";
    setText(connection, "● live");
    connection.title = `updated ${state.updatedAt.toLocaleTimeString()}`;
  }
}

live.subscribe((state) => {
  showConnection(state);
  if (page && page.update) page.update(state);
});

onUnauthorized(() => {
  forgetToken();
  showPrompt("The daemon refused the token (401). Enter the API token again.");
});

forgetButton.addEventListener("click", () => {
  forgetToken();
  showPrompt();
});

window.addEventListener("hashchange", route);
route();
