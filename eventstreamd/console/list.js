// The integrations page: the daemon's head sequence and ingest rate (and, on
// JetStream, every daemon of the cluster) above a table of every integration
// with its status, health, lag in events and age, delivery rate and sparkline,
// and how it paces and orders its deliveries. An integration the daemon
// stopped itself (auto-stop) says so, with the reason, in its Status cell.
//
// Rows are kept by id and their cells updated in place on every poll, so focus
// and selection survive the updates; at phone width the table reads as cards.

import { h, setText } from "./dom.js";
import {
  age, autoStopped, count, healthClass, healthLabel, mode, NONE, ownerText, plural, rate,
  shownHealth, statusText,
} from "./format.js";
import { href } from "./router.js";
import { drawSparkline, sparkline } from "./sparkline.js";

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
  const page = h("section", { class: "page list-page" },
    summary.node,
    h("div", { class: "title-row" }, h("h1", { text: "Integrations" }),
      h("div", { class: "actions" },
        h("a", { class: "button", href: href.create("webhook"), text: "New webhook" }),
        h("a", { class: "button", href: href.create("s3"), text: "New S3 integration" }))),
    empty, h("div", { class: "table-wrap" }, table));
  main.replaceChildren(page);
  const rows = new Map();

  return {
    update(state) {
      page.classList.toggle("stale", Boolean(state.failure));
      const snapshot = state.snapshot;
      if (!snapshot) return;
      summary.update(snapshot, live);
      const clustered = Boolean(snapshot.cluster);
      ownerHeader.hidden = !clustered;
      empty.hidden = snapshot.integrations.length > 0;
      setText(empty, "No integrations yet: create a webhook or an S3 integration.");
      const seen = new Set();
      snapshot.integrations.forEach((item, index) => {
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
