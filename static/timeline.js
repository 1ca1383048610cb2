/* palaver: the messages on the page. The history the server rendered, the
 * messages stored since, and our own lines while they wait to be stored
 * (keyed by client_id until the server gives them an id). A message stored
 * twice under one client_id is shown once, and the page stays small while
 * the reader follows along. Markup is render.js's, paging back is
 * history.js's.
 */

import { Renderer } from "./render.js";
import { History } from "./history.js";

/** Messages kept in the page while following along. */
const MAX_DOM = 500;
/** How many sends (sender and client_id) are remembered to drop repeats. */
const SEEN_SENDS = 1000;

export class Timeline {
  /**
   * @param {object} o
   *   root (<main id="chat">, whose data-* say where to page from), log,
   *   list (#messages), me, olderButton, startLine ("This is the start"),
   *   emptyState.
   */
  constructor({ root, log, list, me, olderButton, startLine, emptyState }) {
    this.log = log;
    this.list = list;
    this.me = me;
    this.emptyState = emptyState;
    this.renderer = new Renderer(list, me);
    this.history = new History({ root, log, list, renderer: this.renderer, button: olderButton, start: startLine });
    this.pending = new Map(); // client_id -> li of our messages not yet stored
    // sender + client_id -> the first id seen, for the last SEEN_SENDS
    // messages that carried one: a message stored twice (our resend after a
    // lost ack, or anyone's after a store failover lost the copy shown) is
    // shown once.
    this.seenSends = new Map();
  }

  /** Shows the messages the server rendered into `<template>` and returns
   * their ids; the log starts at the bottom. */
  showRendered(template) {
    const messages = Renderer.history(template);
    this.renderer.bulk(messages);
    this.showEmpty(); // shows the history controls too
    this.log.scrollTop = this.log.scrollHeight;
    return messages.map((m) => m.id).filter(Boolean);
  }

  /** Puts "New since your last visit" before the first rendered message
   * after `since` (the read marker before this visit, data-since), when
   * one is. The log then starts at the divider rather than the bottom,
   * unless everything fits. */
  showSince(since) {
    if (!since) return;
    const first = Array.from(this.list.querySelectorAll("li.msg[data-id]"))
      .find((li) => compareIds(li.dataset.id, since) > 0);
    if (!first) return;
    const li = document.createElement("li");
    li.className = "since-divider";
    li.id = "since-divider";
    li.textContent = "New since your last visit";
    this.list.insertBefore(li, first);
    if (first.previousElementSibling !== li || li.previousElementSibling) {
      this.log.scrollTop = Math.max(0, li.offsetTop - this.log.offsetTop - 8);
    }
  }

  /**
   * A stored message, `{id, user, body, sentAt}`, sent with `clientId` ("" if
   * none); `near` is whether the reader is at the bottom. Returns false when
   * it is on the page already, or was under another id.
   */
  add(m, clientId, near) {
    if (this.renderer.byId(m.id)) return false;
    if (clientId && this.firstId(m.user, clientId, m.id) !== m.id) return false;
    this.renderer.place(this.renderer.message(m));
    this.trim(near);
    this.showEmpty();
    return true;
  }

  /** Our new message, shown at once as being sent. */
  addPending(clientId, body) {
    const li = this.renderer.message({ user: this.me, body, sentAt: Date.now() });
    li.dataset.clientId = clientId;
    this.pending.set(clientId, li);
    this.renderer.place(li);
    this.showEmpty();
  }

  /** How our message is doing (outbox.js's `shown`, with its reason). */
  setStatus(clientId, shown, reason) {
    const li = this.pending.get(clientId);
    if (li) this.renderer.setStatus(li, shown, reason);
  }

  /** Our message `clientId` is stored as `id`: its line is confirmed in
   * place (or goes, when the message already shows under that id). */
  settle(clientId, id, sentAt) {
    const li = this.pending.get(clientId);
    this.pending.delete(clientId);
    this.firstId(this.me, clientId, id);
    if (!li) return;
    const other = this.renderer.byId(id);
    if (other && other !== li) {
      li.remove();
      this.renderer.layout();
    } else {
      this.renderer.confirm(li, id, sentAt);
    }
  }

  /** Our failed message `clientId` is deleted: its line goes. */
  drop(clientId) {
    const li = this.pending.get(clientId);
    this.pending.delete(clientId);
    if (li) li.remove();
    this.renderer.layout();
    this.showEmpty();
  }

  /** The first id seen for `user`'s message `clientId`; `id` if it is the first. */
  firstId(user, clientId, id) {
    const key = user + "\n" + clientId;
    const first = this.seenSends.get(key);
    if (first) return first;
    this.seenSends.set(key, id);
    if (this.seenSends.size > SEEN_SENDS) this.seenSends.delete(this.seenSends.keys().next().value);
    return id;
  }

  /** Drops the oldest messages beyond MAX_DOM. While the reader is
   * scrolled up, the page may grow further rather than pull text out from
   * under them. */
  trim(near) {
    const all = this.list.querySelectorAll("li.msg[data-id]");
    let extra = all.length - (near ? MAX_DOM : 4 * MAX_DOM);
    if (extra <= 0) return;
    const before = this.log.scrollHeight;
    for (const li of all) {
      if (extra-- <= 0) break;
      li.remove();
    }
    this.renderer.layout();
    this.history.trimmed();
    if (!near) this.log.scrollTop -= before - this.log.scrollHeight;
  }

  showEmpty() {
    this.emptyState.hidden = !!this.list.querySelector("li.msg");
    this.history.show(); // the room's first message: the start line above it
  }
}

/** Message ids ("<ms>-<seq>") compared as numbers: <0, 0 or >0. */
function compareIds(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am !== bm ? am - bm : (as || 0) - (bs || 0);
}
