// The API token: kept in this tab's sessionStorage (gone when the tab closes),
// never in a cookie and never in a URL the server sees. `/ui/#token=<token>`
// hands it over in the fragment, which browsers do not send; it is taken from
// there and the fragment is removed from the address bar and the history entry.

const KEY = "eventstreamd.console.token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  sessionStorage.setItem(KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

/** Take `#token=...` from the address bar, if there; true when one was taken. */
export function takeTokenFromFragment() {
  const fragment = location.hash.replace(/^#\/?/, "");
  if (!fragment.startsWith("token=")) return false;
  const value = new URLSearchParams(fragment).get("token");
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
  if (!value) return false;
  setToken(value.trim());
  return true;
}
