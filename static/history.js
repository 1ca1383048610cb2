/* palaver: older messages, a page at a time.
 *
 * Only when the page says where to page from: `<main id="chat">` carries
 * `data-history-url` (e.g. "/chat/lobby/history") and
 * `data-history-start="true"` when the rendered messages already begin at
 * the room's first one. The client then asks
 *   GET {url}?before=<oldest id on the page>&limit=50
 * and expects 200 JSON `{"messages": [{id, user, body, sent_at}, …],
 * "start": bool}`, oldest first, `start` true when nothing older is left;
 * 401 means the session is over (docs/protocol.md §2.1). Without the
 * attribute nothing here shows. At the start, the "This is the start of
 * #room" line (`start`) shows above the first message.
 */

import { compareIds, loginUrl } from "./format.js";

const PAGE = 50;

export class History {
  constructor({ root, log, list, renderer, button, start }) {
    this.url = root.dataset.historyUrl || "";
    this.atStart = root.dataset.historyStart === "true";
    this.log = log;
    this.list = list;
    this.renderer = renderer;
    this.button = button;
    this.start = start || null;
    this.loading = false;
    if (!this.url || !button) return;
    button.addEventListener("click", () => this.older());
    if ("IntersectionObserver" in window) {
      // Reaching the top of the list loads the page before it.
      new IntersectionObserver((entries) => {
        if (entries.some((e) => e.isIntersecting)) this.older();
      }, { root: log, rootMargin: "200px 0px 0px 0px" }).observe(button);
    }
    this.show();
  }

  oldestId() {
    const first = this.list.querySelector("li.msg[data-id]");
    return first ? first.dataset.id : "";
  }

  /** Messages were dropped from the top of the page: they can come back. */
  trimmed() {
    this.atStart = false;
    this.show();
  }

  show() {
    if (!this.url || !this.button) return;
    const any = !!this.oldestId();
    this.button.hidden = this.atStart || !any;
    if (this.start) this.start.hidden = !(this.atStart && any);
  }

  async older() {
    if (!this.url || this.loading || this.atStart) return;
    const before = this.oldestId();
    if (!before) return;
    this.loading = true;
    this.button.disabled = true;
    this.button.textContent = "Loading older messages…";
    try {
      const res = await fetch(this.url + "?before=" + encodeURIComponent(before) + "&limit=" + PAGE, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (res.status === 401) {
        location.assign(loginUrl("expired", location.pathname));
        return;
      }
      if (!res.ok) throw new Error("HTTP " + res.status);
      const data = await res.json();
      const messages = (Array.isArray(data.messages) ? data.messages : [])
        .filter((m) => m && typeof m.id === "string" && compareIds(m.id, before) < 0 && !this.renderer.byId(m.id))
        .map((m) => ({ id: m.id, user: String(m.user || ""), body: String(m.body || ""), sentAt: Number(m.sent_at) || 0 }));
      messages.sort((a, b) => compareIds(a.id, b.id));
      // Keep what the reader is looking at in place.
      const fromBottom = this.log.scrollHeight - this.log.scrollTop;
      this.log.setAttribute("aria-busy", "true");
      this.renderer.bulk(messages);
      this.atStart = data.start === true || messages.length === 0;
      // The button and the start line change the height above too: settle
      // them before the position is restored.
      this.show();
      this.log.scrollTop = this.log.scrollHeight - fromBottom;
      this.log.removeAttribute("aria-busy");
    } catch (e) {
      this.button.textContent = "Could not load older messages. Try again";
      this.loading = false;
      this.button.disabled = false;
      return;
    }
    this.loading = false;
    this.button.disabled = false;
    this.button.textContent = "Load older messages";
  }
}
