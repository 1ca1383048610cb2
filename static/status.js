/* palaver: what the page says about itself. The connection's state in the
 * header pill, a banner under it whenever the page is not connected (with
 * a countdown to the next attempt and "Retry now"), the changes said once
 * to screen readers, short notices (a message refused, too long), and the
 * one that stays until dismissed (why the page is the lobby).
 */

const LABELS = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};
const NOTICE_MS = 6000;

export class ConnectionStatus {
  /**
   * @param {object} o
   *   pill (#conn-state), banner, bannerText, live (a role=status region),
   *   retryButton and onRetry() for the banner's "Retry now".
   */
  constructor({ pill, banner, bannerText, live, retryButton, onRetry }) {
    this.pill = pill;
    this.banner = banner;
    this.bannerText = bannerText;
    this.live = live;
    this.state = "connecting";
    this.wasConnected = false;
    this.countdown = 0;
    retryButton.addEventListener("click", () => onRetry());
  }

  /** `state` as Connection reports it; `detail.retryAt` (ms) while a retry
   * is scheduled. */
  show(state, detail) {
    const before = this.state;
    this.state = state;
    this.pill.textContent = LABELS[state];
    this.pill.className = "conn conn-" + state;

    clearInterval(this.countdown);
    this.countdown = 0;
    if (state === "connected" || (state === "connecting" && !this.wasConnected && !detail.retryAt)) {
      this.banner.hidden = true;
    } else {
      this.banner.hidden = false;
      this.banner.dataset.state = state;
      const paint = () => { this.bannerText.textContent = this.sentence(state, detail.retryAt); };
      paint();
      if (detail.retryAt) this.countdown = setInterval(paint, 1000);
    }

    // Say changes, not every tick: the banner is not a live region.
    if (state !== before) {
      if (state === "connected" && this.wasConnected) this.say("Reconnected.");
      else if (state === "reconnecting" && before === "connected") this.say("Connection lost. Reconnecting.");
      else if (state === "offline") this.say("You are offline.");
    }
    if (state === "connected") this.wasConnected = true;
  }

  sentence(state, retryAt) {
    const lead = state === "offline"
      ? "You are offline."
      : this.wasConnected ? "Connection lost." : "Cannot reach palaver.";
    const secs = retryAt ? Math.max(0, Math.ceil((retryAt - Date.now()) / 1000)) : 0;
    if (state === "offline") return lead + " Messages you write are kept and sent when the network is back.";
    if (secs > 0) return lead + " Reconnecting in " + secs + " s…";
    return lead + " Reconnecting…";
  }

  say(text) {
    this.live.textContent = text;
  }
}

/** A sentence shown for a few seconds in a role=status region. */
export class Notice {
  constructor(el) {
    this.el = el;
    this.timer = 0;
  }

  show(text) {
    this.el.textContent = text;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => { this.el.textContent = ""; }, NOTICE_MS);
  }
}

/** A sentence that stays until the reader dismisses it: why the page is
 * the lobby and not the room they were in. Said once (role=status). */
export class PageNotice {
  /** `el`: the region; `afterDismiss()`: where focus goes next. */
  constructor(el, afterDismiss) {
    this.el = el;
    this.afterDismiss = afterDismiss;
  }

  show(text) {
    const said = document.createElement("p");
    said.className = "page-notice-text";
    said.textContent = text;
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.id = "page-notice-dismiss";
    dismiss.className = "btn btn-small btn-outline";
    dismiss.textContent = "Dismiss";
    dismiss.addEventListener("click", () => {
      this.el.replaceChildren();
      this.afterDismiss();
    });
    this.el.replaceChildren(said, dismiss);
  }
}
