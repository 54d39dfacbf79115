// An integration's page: live figures (from the shared /status poll), its
// parameters as the API returns them (secrets masked; parameters.js), log,
// rejected events (view, retry, delete), replays, and the actions start, stop,
// edit, rotate secret and delete.
//
// A stop the daemon made itself (its deliveries kept failing for
// stop_after_failing) is shown with its reason from the status snapshot
// (`auto_stopped`, `stop_reason`: the record's, so every daemon says the same)
// until the integration runs again. A rotated signing secret is shown once, in
// a box the user closes; it is never read back (the API shows it masked).
//
// The parameters, log and rejected events are read from the API when the page
// opens, after every action, when the daemon comes back, when the snapshot's
// count of rejected events changes, and every few seconds besides.

import { api, Unreachable } from "./api.js";
import { confirmAction } from "./dialog.js";
import { emptyRow, fill, h, row, setText, table, whenChanged } from "./dom.js";
import {
  age, autoStopped, count, healthClass, healthLabel, maxRateText, NONE, orderText, ownerText,
  plural, rate, shownHealth, size, statusText, when,
} from "./format.js";
import { parameterRows } from "./parameters.js";
import { replayPanel } from "./replay.js";
import { go, href } from "./router.js";
import { drawSparkline, sparkline } from "./sparkline.js";

const SLOW_REFRESH = 5000; // ms between reads of the parameters, log and rejected events
const LOG_COLUMNS = ["Time", "Action", "Reason"];
const REJECTED_COLUMNS = ["Rejected", "Event", "Seq", "HTTP", "Receiver's answer", "Attempts", ""];

export function mountDetail(main, { route, live }) {
  const id = route.id;
  const flash = h("p", { class: "flash", role: "status", hidden: true });
  const say = (text, kind = "ok") => {
    flash.className = `flash flash-${kind}`;
    flash.textContent = text;
    flash.hidden = false;
  };
  const failed = (what, error) => say(error instanceof Unreachable
    ? `${what}: the daemon does not answer.` : `${what}: ${error.message}`, "error");

  const badge = h("span", { class: healthClass(null), text: healthLabel(null) });
  const buttons = {
    start: h("button", { type: "button", text: "Start" }),
    stop: h("button", { type: "button", text: "Stop" }),
    edit: h("button", { type: "button", class: "quiet", text: "Edit" }),
    rotate: h("button", { type: "button", class: "quiet", text: "Rotate signing secret",
      hidden: true }),
    remove: h("button", { type: "button", class: "danger", text: "Delete" }),
  };
  const editHint = h("span", { class: "muted small", text: "stop it to edit", hidden: true });
  const figures = figureList(id, live);
  const stopReason = h("span");
  const autoStop = h("p", { class: "notice notice-error", role: "status", hidden: true },
    h("strong", { text: "Stopped automatically by the daemon: " }), stopReason,
    " Start delivers everything it missed, from where it stopped.");
  const secret = h("div", { class: "secret-once", hidden: true });
  const params = h("dl", { class: "params" });
  const rejected = rejectedTable(id, { say, failed, reload: () => loadRejected() });
  const logBody = h("tbody");
  const replays = replayPanel(id, { say, failed });

  const page = h("section", { class: "page detail-page" },
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
      h("a", { href: href.list(), text: "Integrations" }), " / ",
      h("span", { class: "mono", text: id })),
    h("div", { class: "title-row" },
      h("h1", {}, h("span", { class: "mono", text: id })), badge),
    h("div", { class: "actions", role: "group", "aria-label": "Actions" },
      buttons.start, buttons.stop, buttons.edit, editHint, buttons.rotate, buttons.remove),
    flash, autoStop, secret,
    h("div", { class: "columns" },
      h("section", { class: "panel", "aria-label": "Live figures" },
        h("h2", { text: "Now" }), figures.node),
      h("section", { class: "panel", "aria-label": "Parameters" },
        h("h2", { text: "Parameters" }), params)),
    replays.node,
    h("section", { class: "panel", "aria-label": "Rejected events" },
      h("h2", { text: "Rejected events" }), rejected.node),
    h("section", { class: "panel", "aria-label": "Log" },
      h("h2", { text: "Log" }),
      h("div", { class: "table-wrap tall", tabindex: "0" },
        table("log", LOG_COLUMNS, logBody))));
  fill(main, page);

  let integration = null;
  let rejectedCount = null;
  let wasUnreachable = false;
  let gone = false;

  const showParams = whenChanged((shown) => fill(params, parameterRows(shown)));
  const showLogs = whenChanged((entries) => fill(logBody, entries.length
    ? entries.map((entry) => row(LOG_COLUMNS, [
      h("td", { class: "nowrap", title: entry.created_at, text: when(entry.created_at) }),
      h("td", { class: "mono", text: entry.action }),
      h("td", { class: "reason", text: entry.reason })]))
    : emptyRow(3, "Nothing logged yet.")));

  async function loadIntegration() {
    try {
      integration = await api.get(id);
    } catch (error) {
      if (error.status === 404) {
        gone = true;
        say(`There is no integration ${id} (any more).`, "error");
        for (const button of Object.values(buttons)) button.disabled = true;
      }
      return;
    }
    gone = false;
    showParams(integration);
    buttons.rotate.hidden = !integration.callback_parameters;
    showActions(integration.status);
  }

  async function loadLogs() {
    try {
      showLogs((await api.logs(id)).entries);
    } catch {
      // unreachable or gone: the page says so elsewhere; the last log stays
    }
  }

  const loadRejected = () => rejected.load();
  const loadAll = () => Promise.all([loadIntegration(), loadLogs(), loadRejected()]);

  function showActions(status) {
    const running = status === "running";
    buttons.start.disabled = gone || running;
    buttons.stop.disabled = gone || !running;
    buttons.edit.disabled = gone || running;
    editHint.hidden = !running;
  }

  async function act(what, call, done) {
    try {
      await call();
      say(done);
    } catch (error) {
      failed(what, error);
    }
    live.refresh();
    await loadAll();
  }

  buttons.start.addEventListener("click", () => act("Start", () => api.start(id), "Started."));
  buttons.stop.addEventListener("click", () => act("Stop", () => api.stop(id), "Stopped."));
  buttons.edit.addEventListener("click", () => go(href.edit(id)));
  buttons.remove.addEventListener("click", async () => {
    if (!await confirmAction(`Delete ${id}, with its log and rejected events? This cannot be undone.`,
      "Delete integration")) return;
    try {
      await api.remove(id);
      go(href.list());
    } catch (error) {
      failed("Delete", error);
    }
  });
  buttons.rotate.addEventListener("click", async () => {
    if (!await confirmAction(`Give ${id} a new signing secret? Deliveries carry signatures by ` +
      "the new and the previous secret for a while (webhook.rotation_overlap), then by the new " +
      "one only: hand it to the receiver now.", "Rotate secret")) return;
    try {
      const result = await api.rotateSecret(id);
      showSecret(secret, result.signing_secret);
      say("The signing secret was rotated.");
    } catch (error) {
      if (error.unsupported) say("Rotating the signing secret is not supported by this daemon.", "error");
      else failed("Rotate secret", error);
    }
    await loadIntegration();
  });

  const timer = setInterval(() => {
    if (!gone) loadAll();
  }, SLOW_REFRESH);
  loadAll();

  return {
    update(state) {
      const reachable = !state.failure;
      page.classList.toggle("stale", !reachable);
      if (reachable && wasUnreachable) loadAll();
      wasUnreachable = !reachable;
      const item = state.snapshot && state.snapshot.integrations.find((i) => i.id === id);
      if (!item) return;
      badge.className = healthClass(shownHealth(item));
      setText(badge, healthLabel(shownHealth(item)));
      figures.update(item, state);
      showActions(item.status);
      autoStop.hidden = !autoStopped(item);
      setText(stopReason, autoStopped(item) ? item.stop_reason ?? "its deliveries kept failing." : "");
      if (rejectedCount !== null && item.rejected_events !== rejectedCount) loadRejected();
      rejectedCount = item.rejected_events;
    },
    unmount() {
      clearInterval(timer);
      replays.unmount();
    },
  };
}

function figureList(id, live) {
  const line = sparkline(`Delivery rate of ${id}`);
  const rows = [
    ["Status", statusText],
    ["Target", (i) => i.target],
    ["Lag", (i) => plural(i.lag_events, "event")],
    ["Oldest waiting", (i) => age(i.lag_seconds)],
    ["Delivery rate", (i) => rate(i.delivered_rate), line],
    ["Delivered", (i) => count(i.delivered)],
    ["Failed attempts", (i) => count(i.failures)],
    ["In flight", (i) => count(i.in_flight)],
    ["Cursor", (i) => count(i.cursor)],
    ["Rejected stored", (i) => count(i.rejected_events)],
    ["Last error", (i) => (i.last_error_cause
      ? `${i.last_error_cause} (${age(i.last_error_age)} ago)` : NONE)],
    ["Buffered", (i) => (i.buffered_bytes === null || i.buffered_bytes === undefined ? NONE
      : `${size(i.buffered_bytes)}, oldest ${age(i.buffered_age)}`)],
    ["Sink crashes", (i) => (i.restart_in ? `${count(i.crashes)}, restarting in ${age(i.restart_in)}`
      : count(i.crashes))],
    ["Delivered by", (i, state) => (state.snapshot.cluster ? ownerText(i, state.snapshot) : null)],
    // A webhook's delivery controls, when it has any (the parameters say "no limit" too).
    ["Max rate", (i) => (i.max_rate || i.ordering ? maxRateText(i.max_rate) : null)],
    ["Order", (i) => (i.max_rate || i.ordering ? orderText(i.ordering) : null)],
  ];
  const node = h("dl", { class: "figures" });
  const cells = rows.map(([label, , extra]) => {
    const term = h("dt", { text: label });
    const value = h("span", { text: NONE });
    const dd = h("dd", {}, value, extra ? " " : null, extra);
    node.append(term, dd);
    return { term, dd, value };
  });
  return {
    node,
    update(item, state) {
      rows.forEach(([, read], index) => {
        const text = read(item, state);
        const { term, dd, value } = cells[index];
        term.hidden = dd.hidden = text === null;
        if (text !== null) setText(value, text);
      });
      drawSparkline(line, live.history(id));
    },
  };
}

function showSecret(container, value) {
  const id = "new-signing-secret";
  const input = h("input", { id, type: "text", readonly: true, value, class: "mono",
    spellcheck: "false", autocomplete: "off" });
  const copy = h("button", { type: "button", class: "quiet", text: "Copy" });
  copy.addEventListener("click", async () => {
    input.select();
    try {
      await navigator.clipboard.writeText(value);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Select and copy by hand";
    }
  });
  const done = h("button", { type: "button", class: "quiet", text: "Done" });
  done.addEventListener("click", () => {
    fill(container);
    container.hidden = true;
  });
  fill(container, h("label", { for: id, text: "New signing secret (shown once: hand it to the receiver now)" }),
    h("div", { class: "inline" }, input, copy, done));
  container.hidden = false;
  input.select();
}

function rejectedTable(id, { say, failed, reload }) {
  const body = h("tbody");
  const node = h("div", { class: "table-wrap" }, table("rejected", REJECTED_COLUMNS, body));
  const show = whenChanged((entries) => fill(body, entries.length ? entries.map(entryRow)
    : emptyRow(7, "No rejected events.")));

  async function load() {
    try {
      show((await api.rejected(id)).rejected_events);
    } catch {
      // unreachable or gone: the page says so elsewhere; the last list stays
    }
  }

  function entryRow(entry) {
    const view = h("button", { type: "button", class: "quiet small", text: "View",
      "aria-expanded": "false" });
    const retry = h("button", { type: "button", class: "small", text: "Retry",
      disabled: entry.deliverable === false,
      title: entry.deliverable === false ? "this event can never be delivered as it is" : null });
    const remove = h("button", { type: "button", class: "danger small", text: "Delete" });
    const tr = row(REJECTED_COLUMNS, [
      h("td", { class: "nowrap", title: entry.created_at, text: when(entry.created_at) }),
      h("td", { class: "mono", text: entry.event_id ?? entry.id }),
      h("td", { text: count(entry.seq) }),
      h("td", { text: entry.status ?? NONE }),
      h("td", { class: "reason", text: entry.reason ?? NONE }),
      h("td", { text: count(entry.attempts) }),
      h("td", { class: "row-actions" }, view, retry, remove)], { "data-rejected-id": entry.id });
    let shown = null;
    view.addEventListener("click", async () => {
      if (shown) {
        shown.remove();
        shown = null;
        view.setAttribute("aria-expanded", "false");
        return;
      }
      try {
        const event = await api.rejectedEvent(id, entry.id);
        shown = h("tr", { class: "event-row" }, h("td", { colspan: 7 },
          h("pre", { class: "payload", text: JSON.stringify(event, null, 2) })));
        tr.after(shown);
        view.setAttribute("aria-expanded", "true");
      } catch (error) {
        failed("View", error);
      }
    });
    retry.addEventListener("click", async () => {
      retry.disabled = true;
      try {
        await api.retryRejected(id, entry.id);
        say(`Delivered the rejected event ${entry.event_id ?? entry.id}; it is no longer kept.`);
      } catch (error) {
        failed("Retry", error);
      }
      await reload();
    });
    remove.addEventListener("click", async () => {
      if (!await confirmAction(`Delete the rejected event ${entry.event_id ?? entry.id}? ` +
        "It will not be delivered.", "Delete rejected event")) return;
      try {
        await api.deleteRejected(id, entry.id);
        say("The rejected event was deleted.");
      } catch (error) {
        failed("Delete", error);
      }
      await reload();
    });
    return tr;
  }

  return { node, load };
}
