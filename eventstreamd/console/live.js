// Live updates: `GET /status` once a second (the next poll starts a second
// after the previous one ended, so never more often), shared by every page.
//
// The delivery-rate history for the sparklines is kept here, client-side:
// seeded from the snapshot's own history when an integration is first seen,
// then one sample per poll. It covers integrations another daemon delivers too
// (their rates come from that daemon's announcements; the local history of
// the snapshot holds only this daemon's sinks).
//
// When a poll fails the state says since when; polling goes on and the next
// answer clears it. A 401 is the app's business (back to the token prompt).

import { ApiError } from "./api.js";

const INTERVAL = 1000; // ms between the end of one poll and the start of the next
const HISTORY = 60; // samples kept per rate

export class Live {
  constructor(fetchStatus) {
    this.fetchStatus = fetchStatus;
    this.listeners = new Set();
    this.snapshot = null;
    this.failure = null; // {since: Date, message} while the daemon does not answer
    this.updatedAt = null;
    this.histories = new Map();
    this.ingestHistory = [];
    this.timer = null;
    this.running = false;
    this.generation = 0;
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.generation += 1;
    this.poll(this.generation);
  }

  stop() {
    this.running = false;
    this.generation += 1;
    clearTimeout(this.timer);
  }

  /** Poll now (after an action), instead of waiting for the next tick. */
  refresh() {
    if (!this.running) return;
    clearTimeout(this.timer);
    this.generation += 1;
    this.poll(this.generation);
  }

  history(id) {
    return this.histories.get(id) || [];
  }

  async poll(generation) {
    let snapshot = null;
    let failure = null;
    try {
      snapshot = await this.fetchStatus();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return; // the app takes over
      failure = error;
    }
    if (generation !== this.generation) return; // stopped or superseded meanwhile
    if (snapshot) this.accept(snapshot);
    else if (!this.failure) this.failure = { since: new Date(), message: describe(failure) };
    this.notify();
    this.timer = setTimeout(() => this.poll(generation), INTERVAL);
  }

  accept(snapshot) {
    this.snapshot = snapshot;
    this.failure = null;
    this.updatedAt = new Date();
    if (this.ingestHistory.length) push(this.ingestHistory, snapshot.ingest_rate ?? 0);
    else this.ingestHistory = [...(snapshot.ingest_history || [])].slice(-HISTORY);
    const seen = new Set();
    for (const item of snapshot.integrations) {
      seen.add(item.id);
      let history = this.histories.get(item.id);
      if (!history) {
        history = [...(item.delivered_history || [])].slice(-HISTORY);
        this.histories.set(item.id, history);
      } else {
        push(history, item.delivered_rate ?? 0);
      }
    }
    for (const id of this.histories.keys()) if (!seen.has(id)) this.histories.delete(id);
  }

  notify() {
    for (const listener of this.listeners) listener(this);
  }
}

function describe(error) {
  return error instanceof ApiError
    ? `The daemon answers HTTP ${error.status} (${error.message})`
    : "The daemon does not answer";
}

function push(history, value) {
  history.push(value);
  if (history.length > HISTORY) history.splice(0, history.length - HISTORY);
}
