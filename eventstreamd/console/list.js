// The integrations page: the daemon's head sequence and ingest rate (and, on
// JetStream, every daemon of the cluster) above a table of every integration
// with its status, health, lag in events and age, delivery rate and sparkline,
// and how it paces and orders its deliveries. An integration the daemon
// stopped itself (auto-stop) says so, with the reason, in its Status cell.
//
// Rows are kept by id and their cells updated in place on every poll, so focus
// and selection survive the updates; at phone width the table reads as cards.
//
// A page shows at most PAGE_SIZE integrations (in id order, as the daemon lists
// them), with a pager and a filter by id or target: with a thousand
// integrations each poll touches one page of rows, not a thousand. The page
// and the filter stay while the list updates.

import { h, setText } from "./dom.js";
import {
  age, autoStopped, count, healthClass, healthLabel, mode, NONE, ownerText, plural, rate,
  shownHealth, statusText,
} from "./format.js";
import { href } from "./router.js";
import { drawSparkline, sparkline } from "./sparkline.js";

const PAGE_SIZE = 100;

const COLUMNS = [
  "Integration", "Target", "Mode", "Status", "Health", "Lag", "Oldest waiting", "Delivery rate",
  "Delivered", "Rejected", "Delivered by",
];
const OWNER = COLUMNS.length - 1; // "Delivered by": only with several daemons

export function mountList(main, { live }) {
  const summary = summaryBlock();
  const body = h("tbody");
  const ownerHeader = h("th", { scope: "col", text: COLUMNS[OWNER], hidden: true });
  const empty = h("p", { class: "muted", text: "Loading…" });
  const table = h("table", { class: "integrations cards" },
    h("caption", { class: "visually-hidden", text: "Integrations" }),
    h("thead", {}, h("tr", {},
      COLUMNS.slice(0, OWNER).map((text) => h("th", { scope: "col", text })), ownerHeader)),
    body);
  const pager = pagerBlock(() => redraw());
  const filter = h("input", {
    type: "search", class: "filter", placeholder: "Filter by id or target",
    "aria-label": "Filter integrations by id or target",
    on: { input: () => { pager.view.page = 0; redraw(); } },
  });
  const page = h("section", { class: "page list-page" },
    summary.node,
    h("div", { class: "title-row" }, h("h1", { text: "Integrations" }),
      h("div", { class: "actions" },
        h("a", { class: "button", href: href.create("webhook"), text: "New webhook" }),
        h("a", { class: "button", href: href.create("s3"), text: "New S3 integration" }))),
    h("div", { class: "list-tools" }, filter, pager.node),
    empty, h("div", { class: "table-wrap" }, table));
  main.replaceChildren(page);
  const rows = new Map();
  let last = null;

  function redraw() {
    if (last) update(last);
  }

  function update(state) {
    last = state;
    page.classList.toggle("stale", Boolean(state.failure));
    const snapshot = state.snapshot;
    if (!snapshot) return;
    summary.update(snapshot, live);
    const clustered = Boolean(snapshot.cluster);
    ownerHeader.hidden = !clustered;
    const wanted = filter.value.trim().toLowerCase();
    const matching = wanted
      ? snapshot.integrations.filter((item) => item.id.toLowerCase().includes(wanted)
        || String(item.target ?? "").toLowerCase().includes(wanted))
      : snapshot.integrations;
    empty.hidden = matching.length > 0;
    setText(empty, snapshot.integrations.length
      ? "No integration matches the filter."
      : "No integrations yet: create a webhook or an S3 integration.");
    const shown = pager.slice(matching);
    const seen = new Set();
    shown.forEach((item, index) => {
      seen.add(item.id);
      let row = rows.get(item.id);
      if (!row) {
        row = integrationRow(item.id);
        rows.set(item.id, row);
      }
      row.update(item, snapshot, live, clustered);
      if (body.children[index] !== row.node) body.insertBefore(row.node, body.children[index] || null);
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.node.remove();
        rows.delete(id);
      }
    }
  }

  return { update };
}

/** "Previous", "101–200 of 1,000", "Next"; hidden while everything fits on one page. */
function pagerBlock(changed) {
  const view = { page: 0 };
  const position = h("span", { class: "pager-position", "aria-live": "polite" });
  const move = (step) => () => { view.page += step; changed(); };
  const previous = h("button", { type: "button", class: "quiet small", text: "Previous",
    on: { click: move(-1) } });
  const next = h("button", { type: "button", class: "quiet small", text: "Next",
    on: { click: move(1) } });
  const node = h("nav", { class: "pager", "aria-label": "Pages of integrations", hidden: true },
    previous, position, next);
  return {
    node,
    view,
    slice(items) {
      const pages = Math.max(1, Math.ceil(items.length / PAGE_SIZE));
      view.page = Math.min(Math.max(0, view.page), pages - 1);
      const start = view.page * PAGE_SIZE;
      const shown = items.slice(start, start + PAGE_SIZE);
      node.hidden = pages === 1;
      previous.disabled = view.page === 0;
      next.disabled = view.page === pages - 1;
      setText(position, items.length
        ? `${count(start + 1)}–${count(start + shown.length)} of ${count(items.length)}`
        : "");
      return shown;
    },
  };
}

function integrationRow(id) {
  const cell = (label, ...children) => h("td", { "data-label": label }, ...children);
  const texts = COLUMNS.map(() => h("span"));
  const health = h("span", { class: healthClass(null) });
  const line = sparkline(`Delivery rate of ${id}`);
  const kind = h("span", { class: "kind" });
  const stopReason = h("span", { class: "stop-reason", hidden: true });
  const cells = [
    h("th", { scope: "row", "data-label": COLUMNS[0] },
      h("a", { class: "mono", href: href.detail(id), text: id }), " ", kind),
    cell(COLUMNS[1], texts[1]),
    cell(COLUMNS[2], texts[2]),
    cell(COLUMNS[3], texts[3], stopReason),
    cell(COLUMNS[4], health),
    cell(COLUMNS[5], texts[5]),
    cell(COLUMNS[6], texts[6]),
    cell(COLUMNS[7], h("span", { class: "rate" }, texts[7], " ", line)),
    cell(COLUMNS[8], texts[8]),
    cell(COLUMNS[9], texts[9]),
    cell(COLUMNS[OWNER], texts[OWNER]),
  ];
  const node = h("tr", { "data-id": id }, cells);
  return {
    node,
    update(item, snapshot, live, clustered) {
      setText(kind, item.kind);
      setText(texts[1], item.target ?? NONE);
      setText(texts[2], mode(item));
      setText(texts[3], statusText(item));
      const reason = autoStopped(item) ? item.stop_reason ?? "" : "";
      stopReason.hidden = !reason;
      setText(stopReason, reason);
      stopReason.title = reason;
      health.className = healthClass(shownHealth(item));
      setText(health, healthLabel(shownHealth(item)));
      setText(texts[5], plural(item.lag_events, "event"));
      setText(texts[6], age(item.lag_seconds));
      setText(texts[7], rate(item.delivered_rate));
      drawSparkline(line, live.history(id));
      setText(texts[8], count(item.delivered));
      setText(texts[9], count(item.rejected_events));
      cells[OWNER].hidden = !clustered;
      if (clustered) setText(texts[OWNER], ownerText(item, snapshot));
    },
  };
}

function summaryBlock() {
  const values = {
    head: h("span"), ingest: h("span"), store: h("span"), daemon: h("span"),
  };
  const line = sparkline("Ingest rate");
  const cluster = h("ul", { class: "cluster", "aria-label": "Daemons", hidden: true });
  const item = (label, ...children) => h("div", { class: "stat" },
    h("span", { class: "stat-label", text: label }), h("span", { class: "stat-value" }, ...children));
  const node = h("section", { class: "summary", "aria-label": "Daemon" },
    item("Head sequence", values.head),
    item("Ingest rate", values.ingest, " ", line),
    item("Store", values.store),
    item("Daemon", values.daemon),
    cluster);
  return {
    node,
    update(snapshot, live) {
      setText(values.head, count(snapshot.head));
      setText(values.ingest, rate(snapshot.ingest_rate));
      drawSparkline(line, live.ingestHistory);
      const store = snapshot.store || {};
      setText(values.store, store.connected === false
        ? `✖ ${store.backend} unreachable: ${store.error ?? "no answer"}`
        : `${store.backend ?? NONE}${store.server ? ` (${store.server})` : ""}`);
      values.store.className = store.connected === false ? "health health-failing" : "";
      const daemon = snapshot.daemon || {};
      setText(values.daemon, `${daemon.version ?? NONE}, up ${age(daemon.uptime)}`);
      cluster.hidden = !snapshot.cluster;
      if (snapshot.cluster) {
        cluster.replaceChildren(...snapshot.cluster.instances.map((instance) => h("li", {
          class: instance.live ? "" : "muted",
          text: `${instance.this ? "★ " : ""}${instance.instance}: ` +
            `${plural(instance.owns.length, "integration")}, ${rate(instance.delivered_rate)}` +
            `${instance.live ? "" : " (not live)"}`,
        })));
      }
    },
  };
}
