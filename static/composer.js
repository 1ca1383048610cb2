/* palaver: writing. The message box (Enter sends, Shift+Enter starts a new
 * line, an IME composition is left alone), its draft kept per room for the
 * life of the tab, a new message shown at once and handed to the outbox,
 * and the only ways to resend or drop one that failed: its Retry and Delete
 * buttons, and "Retry all" in the bar that counts them. Near the limit a
 * counter shows; over it (a long paste), the reader chooses: send it as
 * several messages in order, or keep editing. Nothing is ever cut.
 */

import { bodyLength, cleanBody, MAX_BODY, splitBody } from "./text.js";

/** From this many characters on, the composer counts them. */
const COUNT_FROM = MAX_BODY - 200;
const number = (n) => n.toLocaleString();

export class Composer {
  /**
   * @param {object} o
   *   form (#composer), fields (its fieldset, disabled until this runs),
   *   input, list (#messages, for the Retry and Delete buttons), bar,
   *   barText and retryAll (the outbox bar); room; timeline, outbox,
   *   notice; followed(): the page scrolls to our new message; count
   *   (#composer-count), tooLong (#too-long, the choice over the limit),
   *   tooLongText, split and keepEditing (its buttons).
   */
  constructor(o) {
    this.o = o;
    this.input = o.input;
    this.drafts = new Drafts(o.room);
    o.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit();
    });
    o.input.addEventListener("keydown", (ev) => {
      if (ev.key !== "Enter" || ev.shiftKey || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      if (ev.isComposing || ev.keyCode === 229) return; // IME composition
      ev.preventDefault();
      this.submit();
    });
    o.input.addEventListener("input", () => {
      this.drafts.save(this.input.value);
      this.measure();
    });
    o.split.addEventListener("click", () => this.sendSplit());
    o.keepEditing.addEventListener("click", () => {
      o.tooLong.hidden = true;
      this.input.focus();
    });
    // Only these buttons resend or drop a message: a click elsewhere on it
    // does nothing.
    o.list.addEventListener("click", (ev) => {
      const button = ev.target instanceof Element ? ev.target.closest("button[data-action]") : null;
      const li = button ? button.closest("li.msg") : null;
      const cid = li ? li.dataset.clientId : "";
      if (!cid) return;
      if (button.dataset.action === "retry") {
        o.outbox.retryUpTo(cid);
      } else if (button.dataset.action === "delete") {
        o.timeline.drop(cid);
        o.outbox.discard(cid);
      } else {
        return;
      }
      this.input.focus();
    });
    o.retryAll.addEventListener("click", () => {
      o.outbox.retryAll();
      this.input.focus();
    });
  }

  /** Opens the box for writing, with the room's draft, focused at its end;
   * on a touch screen not focused, since focus there brings up the
   * keyboard over the messages on every room switch. */
  open() {
    this.o.fields.disabled = false;
    this.input.value = this.drafts.load();
    this.measure();
    if (window.matchMedia("(pointer: coarse)").matches) return;
    this.input.focus();
    this.input.setSelectionRange(this.input.value.length, this.input.value.length);
  }

  submit() {
    // Trimmed as the server trims, so the line shown is the line stored.
    const body = cleanBody(this.input.value);
    if (!body) return;
    if (bodyLength(body) > MAX_BODY) {
      this.measure();
      this.o.split.focus();
      return;
    }
    this.post([body]);
  }

  /** The box's text, too long for one message, as several, in order. */
  sendSplit() {
    const parts = splitBody(this.input.value);
    if (parts.length) this.post(parts);
  }

  post(bodies) {
    for (const body of bodies) {
      const cid = newClientId();
      this.o.timeline.addPending(cid, body);
      this.o.outbox.add(cid, body);
    }
    this.input.value = "";
    this.drafts.save("");
    this.measure();
    this.input.focus();
    this.o.timeline.trim(true);
    this.o.followed();
  }

  /** The counter near the limit, and the choice past it. */
  measure() {
    const o = this.o;
    const n = bodyLength(cleanBody(this.input.value));
    const over = n > MAX_BODY;
    o.count.hidden = n < COUNT_FROM;
    o.count.classList.toggle("over", over);
    o.count.textContent = number(n) + " / " + number(MAX_BODY) + (over ? " characters: too long for one message" : " characters");
    o.tooLong.hidden = !over;
    if (!over) return;
    const parts = splitBody(this.input.value).length;
    o.tooLongText.textContent = "This is " + number(n) + " characters; one message holds " + number(MAX_BODY) +
      ". Send it as " + parts + " messages, in order, or keep editing.";
    o.split.textContent = "Send as " + parts + " messages";
  }

  /** The outbox changed: the bar says how many failed and wait behind. */
  summarize() {
    const outbox = this.o.outbox;
    const failed = outbox.failedCount();
    this.o.bar.hidden = failed === 0;
    if (!failed) return;
    const waiting = outbox.size - failed;
    this.o.barText.textContent = (failed === 1 ? "1 message was not sent." : failed + " messages were not sent.") +
      (waiting ? " " + waiting + " more waiting behind." : "");
  }
}

function newClientId() {
  if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const DRAFT_PREFIX = "palaver.draft.";

/** The unsent text of each room, kept while the tab lives (sessionStorage). */
export class Drafts {
  constructor(room) {
    this.key = DRAFT_PREFIX + room;
  }

  load() {
    try {
      return sessionStorage.getItem(this.key) || "";
    } catch (e) {
      return "";
    }
  }

  save(text) {
    try {
      if (text) sessionStorage.setItem(this.key, text);
      else sessionStorage.removeItem(this.key);
    } catch (e) {
      /* storage full or refused: the draft lasts this page */
    }
  }
}
