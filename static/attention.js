/* palaver: getting a person's attention, and not more than needed.
 *
 * - Following the conversation: pinned to the bottom, new messages scroll
 *   into view; scrolled up, a "New messages ↓" button counts them instead.
 * - Screen readers hear new messages from others (politely, through one
 *   live region), never the history rendered on load.
 * - The tab's title counts messages that arrived while it was hidden.
 * - Mentions of the reader (@name) are highlighted, and, when the reader
 *   asked for it with the button, shown as desktop notifications while
 *   the tab is hidden.
 * - Unread counts for other rooms: an `unread` frame
 *   `{type:"unread", room, unread, mentions}` puts a badge on that room in
 *   the sidebar; nothing happens until the server sends one. (reading.js
 *   sends `{type:"read", up_to}` when the hello says `read_markers`.)
 */

import { roomTitle } from "./labels.js";

const NEAR_PX = 120;
const NOTIFY_KEY = "palaver.notify-mentions";

export class Attention {
  constructor({ log, list, room, me, jump, announcer, notifyButton, rooms, onBottom }) {
    this.log = log;
    this.list = list;
    this.room = room;
    this.me = me;
    this.jump = jump;
    this.announcer = announcer;
    this.notifyButton = notifyButton;
    this.rooms = rooms;
    this.onBottom = onBottom || (() => {});
    this.baseTitle = document.title;
    this.hiddenUnread = 0;
    this.below = 0; // arrived while scrolled up
    this.pinned = true;
    this.autoScrollUntil = 0;
    this.scrollQueued = false;
    this.announceQueue = [];
    this.announceTimer = 0;

    log.addEventListener("scroll", () => this.onScroll(), { passive: true });
    for (const type of ["wheel", "touchstart", "keydown"]) {
      log.addEventListener(type, () => { this.autoScrollUntil = 0; }, { passive: true });
    }
    jump.addEventListener("click", () => {
      this.scrollToBottom(true);
      const times = list.querySelectorAll("li.msg .msg-time");
      if (times.length) times[times.length - 1].focus({ preventScroll: true });
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.hiddenUnread) {
        this.hiddenUnread = 0;
        document.title = this.baseTitle;
      }
    });
    this.setupNotifications();
  }

  nearBottom() {
    return this.pinned || this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < NEAR_PX;
  }

  onScroll() {
    if (Date.now() < this.autoScrollUntil) return;
    const was = this.pinned;
    this.pinned = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < NEAR_PX;
    if (this.pinned) this.clearBelow();
    if (this.pinned && !was) this.onBottom();
  }

  scrollToBottom(smooth) {
    this.pinned = true;
    this.clearBelow();
    this.autoScrollUntil = Date.now() + (smooth ? 800 : 100);
    if (this.scrollQueued) return;
    this.scrollQueued = true;
    requestAnimationFrame(() => {
      this.scrollQueued = false;
      const log = this.log;
      // A long way to go (a burst of missed messages): jump, don't glide.
      const far = log.scrollHeight - log.scrollTop - log.clientHeight > 2 * log.clientHeight;
      const reduce = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      log.scrollTo({ top: log.scrollHeight, behavior: smooth && !far && !reduce ? "smooth" : "auto" });
    });
  }

  clearBelow() {
    if (!this.below) return;
    this.below = 0;
    this.jump.hidden = true;
  }

  /** A message from someone else arrived live (`replay`: in the catch-up
   * after a reconnect). `near` is whether the reader was at the bottom. */
  arrived(m, near, replay) {
    if (near) this.scrollToBottom(true);
    else {
      this.below += 1;
      this.jump.textContent = this.below === 1 ? "1 new message ↓" : this.below + " new messages ↓";
      this.jump.hidden = false;
    }
    if (document.hidden) {
      this.hiddenUnread += 1;
      document.title = "(" + this.hiddenUnread + ") " + this.baseTitle;
    }
    this.announce(m, replay);
  }

  /** Speaks new messages politely: one at a time as "bob: text", or a
   * count when many come together (a catch-up). */
  announce(m, replay) {
    this.announceQueue.push(m);
    if (this.announceTimer) return;
    this.announceTimer = setTimeout(() => {
      this.announceTimer = 0;
      const q = this.announceQueue;
      this.announceQueue = [];
      let text;
      if (q.length > 3 || (replay && q.length > 1)) text = q.length + " new messages.";
      else text = q.map((x) => x.user + ": " + x.body).join("\n");
      if (text.length > 500) text = text.slice(0, 500) + "…";
      // The same text twice is still announced: clear, then set.
      this.announcer.textContent = "";
      requestAnimationFrame(() => { this.announcer.textContent = text; });
    }, 250);
  }

  /* ---------- mentions ---------- */

  mentioned(m) {
    if (!this.notifyOn() || !document.hidden) return;
    try {
      const n = new Notification(m.user + " mentioned you in " + roomTitle(this.room), { body: m.body, tag: "palaver-" + m.id });
      n.addEventListener("click", () => {
        window.focus();
        n.close();
      });
    } catch (e) {
      /* notifications unavailable after all */
    }
  }

  notifyOn() {
    return "Notification" in window && Notification.permission === "granted" && readPref() === "on";
  }

  setupNotifications() {
    const button = this.notifyButton;
    if (!button || !("Notification" in window)) return;
    button.hidden = false;
    const show = () => {
      const on = this.notifyOn();
      button.setAttribute("aria-pressed", on ? "true" : "false");
      button.textContent = Notification.permission === "denied"
        ? "Notifications blocked"
        : on ? "Mention notifications on" : "Notify me of mentions";
      button.disabled = Notification.permission === "denied";
    };
    button.addEventListener("click", async () => {
      if (this.notifyOn()) {
        writePref("off");
      } else {
        const permission = Notification.permission === "granted" ? "granted" : await Notification.requestPermission();
        writePref(permission === "granted" ? "on" : "off");
      }
      show();
    });
    show();
  }

  /* ---------- unread counts for other rooms ---------- */

  /** An `unread` frame, decoded (frames.js): counts of whole numbers. */
  unread(frame) {
    if (!this.rooms || frame.room === this.room) return;
    const link = this.rooms.querySelector('a[data-room="' + CSS.escape(frame.room) + '"]');
    if (!link) return;
    const n = frame.unread;
    const mentions = frame.mentions;
    let badge = link.querySelector(".room-badge");
    if (!n && !mentions) {
      if (badge) badge.remove();
      link.classList.remove("unread");
      return;
    }
    if (!badge) {
      badge = document.createElement("span");
      badge.className = "room-badge";
      link.append(badge);
    }
    link.classList.add("unread");
    badge.classList.toggle("room-badge-mention", mentions > 0);
    const shown = document.createElement("span");
    shown.setAttribute("aria-hidden", "true");
    shown.textContent = mentions ? "@" + mentions : n > 99 ? "99+" : String(n);
    const said = document.createElement("span");
    said.className = "visually-hidden";
    said.textContent = (mentions ? ", " + counted(mentions, "mention", "mentions") : "") + ", " + n + " unread";
    badge.replaceChildren(shown, said);
  }
}

/** "1 mention", "2 mentions". */
export function counted(n, one, many) {
  return n + " " + (n === 1 ? one : many);
}

function readPref() {
  try {
    return localStorage.getItem(NOTIFY_KEY);
  } catch (e) {
    return null;
  }
}

function writePref(v) {
  try {
    localStorage.setItem(NOTIFY_KEY, v);
  } catch (e) {
    /* storage refused: the choice lasts this page */
  }
}
