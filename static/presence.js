/* palaver: who is online in the room. The first `presence` frame gives the
 * list, each `presence_diff` after it the changes (docs/protocol.md §3.2);
 * in rooms of more than 500, diffs carry only the count. While the page is
 * not connected, the list shown is marked as the last one known. Every
 * name but the reader's links to a direct conversation with that person.
 */

import { directHref } from "./labels.js";

export class Presence {
  /**
   * @param {object} o
   *   list (#online), count (the number beside the heading), stale (the
   *   "last known" note), me: the signed-in user, marked in the list.
   */
  constructor({ list, count, stale, me }) {
    this.list = list;
    this.countEl = count;
    this.staleEl = stale;
    this.me = me;
    this.online = new Set();
    this.total = 0;
  }

  /** A `presence` frame: the whole list. */
  reset(online, count) {
    this.online = new Set(online);
    this.total = count;
    this.render();
  }

  /** A `presence_diff` frame: what changed since the last one. */
  apply(joined, left, count) {
    for (const name of left) this.online.delete(name);
    for (const name of joined) this.online.add(name);
    this.total = count;
    this.render();
  }

  /** Whether the list may be out of date (the socket is down). */
  markStale(stale) {
    this.list.classList.toggle("stale", stale);
    if (this.staleEl) this.staleEl.hidden = !stale;
  }

  render() {
    const names = Array.from(this.online).sort(byName);
    const frag = document.createDocumentFragment();
    for (const name of names) {
      const li = document.createElement("li");
      li.title = name;
      if (name === this.me) {
        li.className = "me";
        li.textContent = name;
      } else {
        const a = document.createElement("a");
        a.href = directHref(name);
        a.textContent = name;
        a.setAttribute("aria-label", "Message " + name);
        li.append(a);
      }
      frag.append(li);
    }
    this.list.replaceChildren(frag);
    if (this.countEl) this.countEl.textContent = this.total ? String(this.total) : "";
  }
}

/** Alphabetical ignoring case; names that differ only in case keep a fixed order. */
function byName(a, b) {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  return x < y ? -1 : x > y ? 1 : a < b ? -1 : a > b ? 1 : 0;
}
