/* palaver: the outbox. Messages go to the server strictly in the order
 * they were written, one at a time (the next leaves when the previous is
 * acknowledged), paced below the server's announced rate. The server
 * stores in arrival order, so nothing of ours is ever stored before a
 * message written earlier.
 *
 * A refusal for speed (`rate_limited`) or an unknown outcome
 * (`unavailable`) is retried by itself, with the same client_id (the
 * server never stores one twice, docs/protocol.md §3.3), after a pause.
 * Anything else, or a message refused again and again, is marked failed:
 * it keeps its place, and the messages written after it wait behind it
 * until it is retried (its Retry button, or Retry all) or deleted. Only
 * those buttons resend.
 *
 * No DOM here: the page learns of changes through `onChange`.
 */

import { Pacer } from "./format.js";

/** Refusals for speed in a row before a message counts as failed (the
 * server closes the socket after ten, docs/protocol.md §3.6). */
const MAX_RATE_LIMITED = 6;
/** Unknown outcomes in a row before a message counts as failed. */
const MAX_UNAVAILABLE = 4;
/** After a reconnect, how long the replay may take to confirm a message
 * that was in flight before it is sent again. */
const REPLAY_GRACE_MS = 400;
/** A message the server could not confirm, retried and still unconfirmed:
 * what happened and what to do, in the reader's words. */
export const UNCONFIRMED = "Not sent: the server could not confirm it. Retry sends it again (never twice).";

export class Outbox {
  /**
   * @param {object} io
   *   send(frame) -> bool: writes a frame if the socket is ready;
   *   onChange(entry): an entry's status changed (or it was added);
   *   onDone(entry): an entry left the outbox (confirmed or deleted);
   *   onSummary(): after any change, for a count of the failed ones;
   *   now(), setTimeout, clearTimeout: injectable for tests.
   */
  constructor(io) {
    this.io = io;
    this.now = io.now || (() => Date.now());
    this.setTimer = io.setTimeout || ((f, ms) => setTimeout(f, ms));
    this.clearTimer = io.clearTimeout || ((t) => clearTimeout(t));
    this.entries = []; // in the order written
    this.inflight = null;
    this.ready = false; // a socket said hello
    this.pausedUntil = 0;
    this.timer = 0;
    this.pacer = new Pacer(10, 20, this.now());
  }

  /** Adds a message; returns its entry `{ cid, body, status }`. */
  add(cid, body) {
    const entry = { cid, body, status: "queued", limited: 0, unavailable: 0, reason: "" };
    this.entries.push(entry);
    this.changed();
    this.pump();
    return entry;
  }

  find(cid) {
    return this.entries.find((e) => e.cid === cid);
  }

  get size() {
    return this.entries.length;
  }

  /** How each entry looks: `failed`, `held` (waiting behind a failed one),
   * `retrying` (the server could not confirm it; sent again by itself) or
   * `sending`. */
  view(entry) {
    if (entry.status === "failed") return "failed";
    for (const e of this.entries) {
      if (e === entry) return entry.unavailable ? "retrying" : "sending";
      if (e.status === "failed") return "held";
    }
    return "sending";
  }

  failedCount() {
    return this.entries.filter((e) => e.status === "failed").length;
  }

  changed() {
    for (const e of this.entries) {
      const v = this.view(e);
      if (e.shown !== v) {
        e.shown = v;
        this.io.onChange(e);
      }
    }
    if (this.io.onSummary) this.io.onSummary();
  }

  /** A socket said hello: the server's bucket is fresh. `rate` is the
   * hello's `{perSec, burst}` when the server announces one. */
  connected(rate) {
    const now = this.now();
    if (rate) this.pacer.set(rate.perSec, rate.burst, now);
    else this.pacer.reset(now);
    this.ready = true;
    const head = this.entries[0];
    if (head && head.status === "unsure") this.pausedUntil = Math.max(this.pausedUntil, now + REPLAY_GRACE_MS);
    this.pump();
  }

  /** The socket closed: whatever was in flight may or may not be stored. */
  disconnected() {
    this.ready = false;
    this.clear();
    if (this.inflight) {
      this.inflight.status = "unsure";
      this.inflight = null;
    }
  }

  /** A frame that is not a `send` (a `reauth`) went through the same bucket. */
  spend() {
    this.pacer.take(this.now());
  }

  clear() {
    if (this.timer) this.clearTimer(this.timer);
    this.timer = 0;
  }

  /** Sends the oldest message when the socket, the pacer and the order
   * allow; otherwise arranges to try again when they will. */
  pump() {
    this.clear();
    if (!this.ready || this.inflight) return;
    const head = this.entries[0];
    if (!head || head.status === "failed") return;
    const now = this.now();
    const wait = Math.max(this.pausedUntil - now, this.pacer.wait(now));
    if (wait > 0) {
      this.timer = this.setTimer(() => {
        this.timer = 0;
        this.pump();
      }, wait);
      return;
    }
    if (!this.io.send({ type: "send", body: head.body, client_id: head.cid })) return;
    this.pacer.take(now);
    head.status = "sent";
    this.inflight = head;
  }

  /** The server stored `cid` (its `ack`, or its `message` frame). Returns
   * the entry, or undefined when it was not ours or is already done. */
  confirmed(cid) {
    const entry = this.find(cid);
    if (!entry) return undefined;
    this.remove(entry);
    return entry;
  }

  remove(entry) {
    const i = this.entries.indexOf(entry);
    if (i >= 0) this.entries.splice(i, 1);
    if (this.inflight === entry) this.inflight = null;
    this.io.onDone(entry);
    this.changed();
    this.pump();
  }

  /** An `error` frame. `cid` may be empty: errors are answered in order,
   * so one without a client_id is about the message in flight. Returns the
   * entry concerned, if any. */
  refused(cid, code, message) {
    const entry = cid ? this.find(cid) : this.inflight;
    if (!entry) return undefined;
    if (this.inflight === entry) this.inflight = null;
    const now = this.now();
    if (code === "rate_limited") {
      entry.limited += 1;
      this.pacer.drain(now);
      if (entry.limited >= MAX_RATE_LIMITED) {
        this.fail(entry, message || "Sending too fast.");
      } else {
        entry.status = "queued";
        this.pausedUntil = now + Math.min(8000, 500 * 2 ** (entry.limited - 1));
      }
    } else if (code === "unavailable") {
      entry.unavailable += 1;
      if (entry.unavailable >= MAX_UNAVAILABLE) {
        this.fail(entry, UNCONFIRMED);
      } else {
        entry.status = "queued"; // resent with the same client_id: stored once
        this.pausedUntil = now + 1000 * 2 ** (entry.unavailable - 1);
      }
    } else {
      this.fail(entry, message || "Not sent.");
    }
    this.changed();
    this.pump();
    return entry;
  }

  fail(entry, reason) {
    entry.status = "failed";
    entry.reason = reason;
  }

  /** Resends the failed messages up to and including `cid`, in order; the
   * ones after it stay as they are. */
  retryUpTo(cid) {
    for (const e of this.entries) {
      if (e.status === "failed") this.requeue(e);
      if (e.cid === cid) break;
    }
    this.pausedUntil = 0;
    this.changed();
    this.pump();
  }

  retryAll() {
    for (const e of this.entries) if (e.status === "failed") this.requeue(e);
    this.pausedUntil = 0;
    this.changed();
    this.pump();
  }

  requeue(e) {
    e.status = "queued";
    e.limited = 0;
    e.unavailable = 0;
    e.reason = "";
  }

  /** Drops a failed message for good (it was never stored). */
  discard(cid) {
    const entry = this.find(cid);
    if (entry && entry.status === "failed") this.remove(entry);
  }
}
