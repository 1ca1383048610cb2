/* palaver: the read marker (docs/protocol.md §3.3, §3.8). Tells the server
 * how far the reader has read: the newest id, once the tab is visible and
 * at the bottom for a second. Only when the hello says the server takes
 * `read` frames: to one that does not, an unknown frame type is invalid.
 */

const SETTLE_MS = 1000;

export class ReadMarker {
  /**
   * @param {object} o
   *   atBottom() -> bool; newestId() -> the newest id seen;
   *   send(frame) -> bool: writes a frame if the socket is ready;
   *   spend(): a frame is about to go through the sending bucket.
   */
  constructor({ atBottom, newestId, send, spend }) {
    this.o = { atBottom, newestId, send, spend };
    this.enabled = false;
    this.sent = "";
    this.timer = 0;
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) this.update();
    });
  }

  /** A socket said hello; `enabled` is its `read_markers`. */
  connected(enabled) {
    this.enabled = enabled;
    this.sent = "";
    this.update();
  }

  /** Something may have been read: sends the marker after a second if so. */
  update() {
    if (!this.enabled) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      const upTo = this.o.newestId();
      if (document.hidden || !this.o.atBottom() || !upTo || this.sent === upTo) return;
      this.o.spend();
      if (this.o.send({ type: "read", up_to: upTo })) this.sent = upTo;
    }, SETTLE_MS);
  }
}
