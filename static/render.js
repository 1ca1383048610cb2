/* palaver: the one place a message becomes markup, for the history the
 * server rendered (as data, in <template id="history">), for live messages
 * and for the sender's own pending ones. Message text only ever becomes
 * text nodes: links, code and mentions are built element by element, never
 * from HTML.
 *
 * Also here: day separators ("Today", "Yesterday", a date) in the reader's
 * time zone, grouping runs from one person under one header, and keeping
 * confirmed messages in id order. The keyboard's way through the list is
 * walk.js's.
 */

import { compareIds, continues, dayKey, dayLabel, fullLabel, nextMidnight, timeLabel } from "./format.js";
import { directHref } from "./labels.js";
import { mentionsName, tokenize } from "./text.js";
import { TimeWalk } from "./walk.js";

const HUES = 8;
/** The small label beside a message of ours that is not confirmed yet. */
const STATE_WORDS = { sending: "sending…", retrying: "retrying…", held: "waiting" };

function hue(name) {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return h % HUES;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The message text as nodes. */
export function renderBody(body, me) {
  const frag = document.createDocumentFragment();
  const mine = me ? me.toLowerCase() : "";
  for (const t of tokenize(body)) {
    if (t.t === "text") {
      frag.append(t.v);
    } else if (t.t === "link") {
      const a = el("a", "msg-link", t.v);
      a.href = t.href;
      a.rel = "noopener noreferrer";
      a.target = "_blank";
      frag.append(a);
    } else if (t.t === "code") {
      frag.append(el("code", "", t.v));
    } else if (t.t === "block") {
      const pre = el("pre", "msg-pre");
      pre.append(el("code", "", t.v));
      frag.append(pre);
    } else if (t.t === "mention") {
      frag.append(el("span", t.name.toLowerCase() === mine ? "mention mention-me" : "mention", t.v));
    }
  }
  return frag;
}

/** Fills a <time> with the short time, shown and read aloud (the day is
 * the separator's to say, once, not every message's); the full moment is
 * in `datetime`, the `title` (hover) and `data-full` (the tooltip shown on
 * keyboard focus). */
export function setTime(time, ms) {
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return;
  time.dateTime = d.toISOString();
  time.title = fullLabel(ms);
  time.dataset.full = fullLabel(ms);
  const short = el("span", "", timeLabel(ms));
  short.setAttribute("aria-hidden", "true");
  time.replaceChildren(short, el("span", "visually-hidden", timeLabel(ms)));
}

export class Renderer {
  /**
   * @param {HTMLOListElement} list  #messages
   * @param {string} me              the signed-in user
   */
  constructor(list, me) {
    this.list = list;
    this.me = me;
    this.midnightTimer = 0;
    this.scheduleMidnight();
    this.walk = new TimeWalk(list);
  }

  /** The messages the server rendered into `<template id="history">`. */
  static history(template) {
    if (!template) return [];
    return Array.from(template.content.querySelectorAll("li.msg"), (li) => ({
      id: li.dataset.id || "",
      user: li.dataset.user || "",
      body: li.textContent || "",
      sentAt: Number(li.dataset.sentAt) || 0,
    }));
  }

  /** One message: `{id?, user, body, sentAt}`. */
  message(m) {
    const li = el("li", "msg");
    if (m.user === this.me) li.classList.add("mine");
    if (m.user !== this.me && mentionsName(m.body, this.me)) li.classList.add("mention-of-me");
    li.dataset.user = m.user;
    li.dataset.sentAt = String(m.sentAt);
    if (m.id) li.dataset.id = m.id;
    const avatar = el("span", "msg-avatar hue-" + hue(m.user.toLowerCase()), Array.from(m.user)[0] || "?");
    avatar.setAttribute("aria-hidden", "true");
    const main = el("div", "msg-main");
    const meta = el("div", "msg-meta");
    const time = el("time", "msg-time");
    time.tabIndex = -1;
    setTime(time, m.sentAt);
    const state = el("span", "msg-state");
    meta.append(this.author(m.user), " ", time);
    const body = el("div", "msg-body");
    body.append(renderBody(m.body, this.me));
    main.append(meta, body);
    li.append(avatar, main, state);
    return li;
  }

  /** The author's name; another person's links to a direct conversation
   * with them. Not a tab stop of its own (the list is one: walk.js). */
  author(user) {
    if (user === this.me) return el("span", "msg-user", user);
    const a = el("a", "msg-user", user);
    a.href = directHref(user);
    a.title = "Message " + user;
    a.tabIndex = -1;
    return a;
  }

  /** Renders many at once (history): in id order, before anything pending. */
  bulk(messages) {
    const frag = document.createDocumentFragment();
    for (const m of messages) frag.append(this.message(m));
    const first = this.list.querySelector("li.msg");
    this.list.insertBefore(frag, first);
    this.layout();
  }

  /** Whether `id` is on the page already. */
  byId(id) {
    for (const li of this.list.querySelectorAll("li.msg[data-id]")) if (li.dataset.id === id) return li;
    return null;
  }

  /** Puts a confirmed message where its id belongs; messages without an
   * id (pending, failed) stay at the bottom in the order written. */
  place(li) {
    const id = li.dataset.id;
    if (li.parentNode) li.remove();
    if (!id) {
      this.list.append(li);
    } else {
      let node = this.list.lastElementChild;
      while (node && (!node.classList.contains("msg") || !node.dataset.id || compareIds(node.dataset.id, id) > 0)) {
        node = node.previousElementSibling;
      }
      if (node) node.after(li);
      else this.list.prepend(li);
    }
    this.layout();
  }

  /** Our pending message was stored as `id` (at `sentAt`, when known). */
  confirm(li, id, sentAt) {
    li.dataset.id = id;
    delete li.dataset.clientId;
    this.setStatus(li, "confirmed");
    const t = Number(sentAt);
    if (Number.isFinite(t) && t > 0) {
      li.dataset.sentAt = String(t);
      const time = li.querySelector(".msg-time");
      if (time) setTime(time, t);
    }
    this.place(li);
  }

  /**
   * How a message of ours is doing: `sending`, `retrying` (the server
   * could not confirm it, and the outbox sends it again by itself), `held`
   * (waiting behind one that failed), `failed` (with `reason`) or
   * `confirmed`. A failed one gets Retry and Delete buttons: the only ways
   * to resend.
   */
  setStatus(li, status, reason) {
    const pending = status === "sending" || status === "retrying" || status === "held";
    li.classList.toggle("pending", pending);
    li.classList.toggle("held", status === "held");
    li.classList.toggle("failed", status === "failed");
    const state = li.querySelector(".msg-state");
    if (state) state.textContent = STATE_WORDS[status] || "";
    const old = li.querySelector(".msg-status");
    if (old) old.remove();
    if (status === "retrying") {
      const box = el("div", "msg-status");
      box.append(el("span", "msg-status-text", "Not sent yet: the server could not confirm it. Retrying…"));
      li.querySelector(".msg-main").append(box);
      return;
    }
    if (status !== "failed") return;
    const box = el("div", "msg-status");
    box.append(el("span", "msg-status-text", reason || "Not sent."));
    const retry = el("button", "msg-action msg-retry", "Retry");
    retry.type = "button";
    retry.dataset.action = "retry";
    const del = el("button", "msg-action msg-delete", "Delete");
    del.type = "button";
    del.dataset.action = "delete";
    box.append(retry, del);
    li.querySelector(".msg-main").append(box);
  }

  /**
   * Day separators before the first message of each local day, and
   * `cont` on messages that continue the previous one's group. Walks the
   * whole list (at most a few hundred items) and touches only what changes.
   */
  layout() {
    const now = Date.now();
    const keep = new Set();
    let prev = null;
    for (const li of this.list.querySelectorAll("li.msg")) {
      const at = Number(li.dataset.sentAt) || now;
      const key = dayKey(at);
      const prevAt = prev ? Number(prev.dataset.sentAt) || now : 0;
      if (!prev || dayKey(prevAt) !== key) {
        let sep = li.previousElementSibling;
        if (!(sep && sep.classList.contains("day") && sep.dataset.day === key && !keep.has(sep))) {
          sep = el("li", "day");
          sep.dataset.day = key;
          sep.append(el("h2", "day-label"));
          li.before(sep);
        }
        const label = dayLabel(at, now);
        const h = sep.firstElementChild;
        if (h.textContent !== label) h.textContent = label;
        keep.add(sep);
      }
      const cont = !!prev && continues(prev.dataset.user, prevAt, li.dataset.user, at)
        && !prev.classList.contains("failed") && !li.classList.contains("failed");
      li.classList.toggle("cont", cont);
      prev = li;
    }
    for (const sep of this.list.querySelectorAll("li.day")) if (!keep.has(sep)) sep.remove();
    this.walk.ensureTabStop();
  }

  /** "Today" becomes "Yesterday" at midnight, without a reload. */
  scheduleMidnight() {
    clearTimeout(this.midnightTimer);
    const wait = Math.min(nextMidnight(Date.now()) - Date.now() + 1000, 6 * 3600 * 1000);
    this.midnightTimer = setTimeout(() => {
      this.layout();
      this.scheduleMidnight();
    }, wait);
  }
}
