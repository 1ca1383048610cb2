/* palaver: the chat session, the frames in. Each decoded frame (frames.js)
 * goes where it belongs: stored messages to the page, acks and refusals to
 * the outbox, presence to the online list, unread counts and the reader's
 * rooms coming and going to the sidebar.
 * Holds what the frames teach: the newest id seen (the next socket's
 * `after=`, docs/protocol.md §3.4) and whether a replay is under way.
 */

import { compareIds } from "./format.js";
import { UNCONFIRMED } from "./outbox.js";
import { mentionsName } from "./text.js";

/** After a hello, how long arriving messages count as the replay of what
 * was missed (announced as a count, not one by one). */
const REPLAY_MS = 1000;
/** What to say of a refusal that comes without a message. */
const FALLBACK_ERRORS = {
  rate_limited: "You are sending messages too fast. Please wait a moment.",
  unavailable: UNCONFIRMED,
  invalid: "That message could not be sent.",
};

export class ChatSession {
  /**
   * @param {object} o
   *   room, me; lastId: the newest id the page was rendered with;
   *   timeline, outbox, attention, presence, reading (a ReadMarker),
   *   notice (a Notice), sidebar (a Sidebar): where the frames' news goes.
   */
  constructor({ room, me, lastId, timeline, outbox, attention, presence, reading, notice, sidebar }) {
    this.room = room;
    this.me = me;
    this.lastId = lastId || "";
    this.replayUntil = 0;
    this.timeline = timeline;
    this.outbox = outbox;
    this.attention = attention;
    this.presence = presence;
    this.reading = reading;
    this.notice = notice;
    this.sidebar = sidebar;
  }

  /** One frame from the server, as decodeFrame returned it. */
  receive(f) {
    switch (f.type) {
      case "hello": this.hello(f); break;
      case "message": if (f.room === this.room) this.message(f); break;
      case "ack": this.ack(f); break;
      case "presence": if (f.room === this.room) this.presence.reset(f.online, f.count); break;
      case "presence_diff": if (f.room === this.room) this.presence.apply(f.joined, f.left, f.count); break;
      case "error": this.error(f); break;
      case "unread":
        this.sidebar.unread(f);
        this.attention.unread(f);
        break;
      case "room_added": this.sidebar.added(f.room, f.visibility); break;
      case "room_removed": this.sidebar.removed(f.room); break;
      default: break; // the connection's own: reauthenticate, reauthenticated
    }
  }

  /** Remembers `id` if it is the newest seen. */
  noteId(id) {
    if (!this.lastId || compareIds(id, this.lastId) > 0) this.lastId = id;
  }

  hello(f) {
    this.replayUntil = Date.now() + REPLAY_MS;
    this.outbox.connected(f.rate);
    this.reading.connected(f.readMarkers);
  }

  message(f) {
    this.noteId(f.id);
    if (f.clientId && this.outbox.find(f.clientId)) {
      this.settle(f.clientId, f.id, f.sentAt);
      return;
    }
    const m = { id: f.id, user: f.user, body: f.body, sentAt: f.sentAt || Date.now() };
    const near = this.attention.nearBottom();
    if (!this.timeline.add(m, f.clientId, near)) return;
    if (m.user === this.me) {
      if (near) this.attention.scrollToBottom(true);
      return;
    }
    this.attention.arrived(m, near, Date.now() < this.replayUntil);
    if (mentionsName(m.body, this.me)) this.attention.mentioned(m);
    this.reading.update();
  }

  ack(f) {
    if (!f.clientId || !this.outbox.find(f.clientId)) return; // already settled by its message
    this.settle(f.clientId, f.id);
  }

  /** Our message `clientId` is stored as `id`. */
  settle(clientId, id, sentAt) {
    this.outbox.confirmed(clientId);
    this.timeline.settle(clientId, id, sentAt);
  }

  error(f) {
    // The server's sentence for an unconfirmed message is written for
    // programs (it names the client_id); the page says it in its own words.
    const own = f.code === "unavailable" ? FALLBACK_ERRORS.unavailable : "";
    const text = own || f.message || FALLBACK_ERRORS[f.code] || "Something went wrong.";
    // Errors about a send are answered in order: one without a client_id
    // is about the message in flight.
    const entry = f.clientId || FALLBACK_ERRORS[f.code] ? this.outbox.refused(f.clientId, f.code, text) : undefined;
    // A refusal for speed is retried quietly; say the rest.
    if (!entry || entry.status === "failed") this.notice.show(text);
  }
}
