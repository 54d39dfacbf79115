// The replay panel of an integration's page: count what a replay would send
// (a dry run) and show that count before the replay can be started; list the
// replays with their progress; cancel one that is running or paused.
//
// The list is read every second while a replay is running or paused, else
// every few seconds. A daemon without replays answers 404 `not_found`: the
// panel then says so and offers nothing.

import { api, Unreachable } from "./api.js";
import { confirmAction } from "./dialog.js";
import { emptyRow, fill, h, row, setText, table } from "./dom.js";
import { bodyFrom } from "./fields.js";
import { count, NONE, when } from "./format.js";
import { field, formErrorSlot, showError, tryBuild } from "./inputs.js";

const ACTIVE_REFRESH = 1000; // ms, while a replay is running or paused
const IDLE_REFRESH = 5000;
const ACTIVE = new Set(["running", "paused"]);
const COLUMNS = ["Replay", "Status", "Range", "Progress", "Started", "Finished", ""];

const FIELDS = [
  { name: "starts_at", label: "From (your local time)", type: "datetime", required: true },
  { name: "ends_at", label: "Until (your local time)", type: "datetime", hint: "empty: now" },
  { name: "max_rate", label: "Max rate (events/s)", type: "number", hint: "empty: as fast as the integration goes" },
  { name: "filter_conditions.event_filter", label: "Events", type: "list",
    placeholder: "order.created", hint: "comma-separated; with neither filter: the integration's own" },
  { name: "filter_conditions.entity_filter", label: "Entities", type: "list", placeholder: "order" },
];

export function replayPanel(id, { say, failed }) {
  const fields = FIELDS.map((spec) => field(spec));
  const formError = formErrorSlot();
  const countButton = h("button", { type: "submit", class: "quiet", text: "Count events" });
  const startButton = h("button", { type: "button", text: "Start replay", hidden: true });
  const counted = h("p", { class: "count", role: "status" });
  const form = h("form", { novalidate: true, class: "replay-form", "aria-label": "New replay" },
    h("div", { class: "grid" }, fields.map((f) => f.row)), formError,
    h("div", { class: "actions" }, countButton, counted, startButton));
  const body = h("tbody");
  const list = h("div", { class: "table-wrap" }, table("replays", COLUMNS, body));
  const unsupported = h("p", { class: "notice", hidden: true,
    text: "Replays are not supported by this daemon." });
  const node = h("section", { class: "panel", "aria-label": "Replays" },
    h("h2", { text: "Replays" }), unsupported, form, list);

  let pending = null; // the body whose dry-run count is shown
  let timer = null;
  let closed = false;

  const forget = () => {
    pending = null;
    startButton.hidden = true;
    counted.textContent = "";
  };
  form.addEventListener("input", forget);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    forget();
    const request = tryBuild(fields, formError, () => bodyFrom(fields));
    if (!request) return;
    countButton.disabled = true;
    try {
      const result = await api.replay(id, { ...request, dry_run: true });
      pending = request;
      counted.textContent = `${count(result.events)} events would be replayed.`;
      startButton.textContent = `Start replay of ${count(result.events)} events`;
      startButton.hidden = false;
      startButton.focus();
    } catch (error) {
      problem(error);
    } finally {
      countButton.disabled = false;
    }
  });

  startButton.addEventListener("click", async () => {
    if (!pending) return;
    const request = pending;
    forget();
    try {
      const started = await api.replay(id, request);
      say(`Replay ${started.replay_id} started: ${count(started.events)} events.`);
    } catch (error) {
      problem(error);
    }
    refresh();
  });

  function problem(error) {
    if (error.unsupported) showUnsupported();
    else if (error instanceof Unreachable) failed("Replay", error);
    else showError(error, fields, formError);
  }

  function showUnsupported() {
    unsupported.hidden = false;
    form.hidden = true;
    list.hidden = true;
  }

  // Rows are kept by replay id and updated in place: a running replay's row changes
  // every second, and its Cancel button must keep the keyboard focus meanwhile.
  const rows = new Map();

  function render(replays) {
    if (!replays.length) {
      rows.clear();
      fill(body, emptyRow(7, "No replays."));
      return;
    }
    const nodes = replays.map((replay) => {
      let entry = rows.get(replay.replay_id);
      if (!entry) {
        entry = replayRow(replay.replay_id);
        rows.set(replay.replay_id, entry);
      }
      entry.update(replay);
      return entry.node;
    });
    const shown = new Set(replays.map((replay) => replay.replay_id));
    for (const replayId of rows.keys()) if (!shown.has(replayId)) rows.delete(replayId);
    if (nodes.length !== body.children.length || nodes.some((node, i) => body.children[i] !== node)) {
      fill(body, nodes);
    }
  }

  async function refresh() {
    clearTimeout(timer);
    let next = IDLE_REFRESH;
    try {
      const replays = (await api.replays(id)).replays;
      render(replays);
      if (replays.some((r) => ACTIVE.has(r.status))) next = ACTIVE_REFRESH;
    } catch (error) {
      if (error.unsupported) {
        showUnsupported();
        return;
      }
    }
    if (!closed) timer = setTimeout(refresh, next);
  }

  function replayRow(replayId) {
    const cancel = h("button", { type: "button", class: "danger small", text: "Cancel" });
    cancel.addEventListener("click", async () => {
      if (!await confirmAction(`Cancel replay ${replayId}? What it delivered stays delivered.`,
        "Cancel replay")) return;
      try {
        await api.cancelReplay(id, replayId);
        say(`Replay ${replayId} cancelled.`);
      } catch (error) {
        failed("Cancel replay", error);
      }
      refresh();
    });
    const status = h("td");
    const range = h("td", { class: "nowrap" });
    const progress = h("progress");
    const progressText = h("span");
    const created = h("td", { class: "nowrap" });
    const finished = h("td", { class: "nowrap" });
    const node = row(COLUMNS, [h("td", { class: "mono", text: replayId }), status, range,
      h("td", {}, progress, " ", progressText), created, finished, h("td", {}, cancel)],
    { "data-replay-id": replayId });
    return {
      node,
      update(replay) {
        const events = replay.events ?? 0;
        const delivered = replay.delivered ?? 0;
        status.className = `replay-${replay.status}`;
        setText(status, replay.status);
        setText(range, `${when(replay.starts_at)} – ${when(replay.ends_at)}`);
        progress.max = Math.max(events, 1);
        progress.value = delivered;
        progress.setAttribute("aria-label", `${delivered} of ${events} delivered`);
        setText(progressText, `${count(delivered)} / ${count(events)}`);
        setText(created, when(replay.created_at));
        setText(finished, replay.finished_at ? when(replay.finished_at) : NONE);
        cancel.hidden = !ACTIVE.has(replay.status);
      },
    };
  }

  refresh();
  return {
    node,
    refresh,
    unmount() {
      closed = true;
      clearTimeout(timer);
    },
  };
}
