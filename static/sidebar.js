/* palaver: the reader's rooms in the sidebar, in three sections the server
 * renders: rooms (#rooms), private rooms (#private-rooms) and direct
 * messages (#direct-rooms), each a list of `<a data-room="label">` links.
 * Kept right while the page is open:
 * - a private room the reader was added to or removed from on any device
 *   (`room_added`, `room_removed`, SPEC §6);
 * - a conversation somebody else started (its first `unread` frame);
 * - the conversation being read, before it has a message (the server lists
 *   direct conversations once they have one).
 * Each change is said once, politely. An empty section keeps its heading
 * and shows a short hint instead of its list.
 */

import { isDirect, roomHref, roomTitle } from "./labels.js";

const SECTION_NAMES = { public: "rooms", private: "private rooms", direct: "direct messages" };

export class Sidebar {
  /**
   * @param {object} o
   *   lists: {public, private, direct}: the sections' <ul>s;
   *   hints: {public?, private?, direct?}: shown while that list is empty;
   *   live: a role=status region (outside the sidebar, which a phone
   *   hides); room: the label of the room being read.
   */
  constructor({ lists, hints, live, room }) {
    this.lists = lists;
    this.hints = hints || {};
    this.live = live;
    this.room = room;
    this.showHints();
  }

  /** The link to `label`, in whichever section it is. */
  link(label) {
    const css = 'a[data-room="' + CSS.escape(label) + '"]';
    for (const list of Object.values(this.lists)) {
      const a = list && list.querySelector(css);
      if (a) return a;
    }
    return null;
  }

  /** A `room_added` frame: the room shows in its section. */
  added(label, visibility) {
    if (this.link(label)) return;
    const section = this.lists[visibility] ? visibility : "public";
    this.insert(label, section);
    this.say(roomTitle(label) + " is now in your " + SECTION_NAMES[section] + ".");
  }

  /** A `room_removed` frame: the reader is no longer a member. */
  removed(label) {
    const a = this.link(label);
    if (!a) return;
    a.closest("li").remove();
    this.showHints();
    this.say("You are no longer a member of " + roomTitle(label) + ".");
  }

  /** An `unread` frame: a conversation not listed yet has news for the
   * reader, so somebody started it. */
  unread(frame) {
    if ((frame.unread || frame.mentions) && isDirect(frame.room) && !this.link(frame.room)) {
      this.added(frame.room, "direct");
    }
  }

  /** Lists the room being read if the server did not (`kind`: its section). */
  showCurrent(kind) {
    if (!this.link(this.room) && this.lists[kind]) this.insert(this.room, kind);
  }

  /** A link to `label` in `section`, in name order among the others. */
  insert(label, section) {
    const list = this.lists[section];
    const a = document.createElement("a");
    a.href = roomHref(label);
    a.dataset.room = label;
    if (label === this.room) {
      a.className = "current";
      a.setAttribute("aria-current", "page");
    }
    const name = document.createElement("span");
    name.className = "room-name";
    name.textContent = roomTitle(label);
    a.append(name);
    const li = document.createElement("li");
    li.append(a);
    const key = label.toLowerCase();
    const next = Array.from(list.querySelectorAll("a[data-room]")).find((other) => other.dataset.room.toLowerCase() > key);
    list.insertBefore(li, next ? next.closest("li") : null);
    this.showHints();
  }

  showHints() {
    for (const [section, hint] of Object.entries(this.hints)) {
      const list = this.lists[section];
      if (hint && list) hint.hidden = !!list.querySelector("a[data-room]");
    }
  }

  say(text) {
    if (!this.live) return;
    // The same words twice are still said: clear, then set.
    this.live.textContent = "";
    requestAnimationFrame(() => { this.live.textContent = text; });
  }
}
