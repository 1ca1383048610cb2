/* palaver: the socket's life. Connecting with `after=` the newest id seen
 * (so the server replays exactly what was missed, docs/protocol.md §3.4),
 * reconnecting on a schedule a person can follow (a countdown and "Retry
 * now"; at once when the network or the tab comes back; no sooner than
 * the server asked while it is turning upgrades away), staying signed in
 * (`reauthenticate` → POST /session/refresh → `reauth`, §3.5), going to
 * the sign-in page, saying why, when the session is over (4401), and
 * never coming back to a room the reader may no longer see (4403).
 */

import { busyDelay, closeReason, loginUrl, reconnectDelay } from "./format.js";
import { decodeFrame } from "./frames.js";
import { refresh, standing } from "./refresh.js";

/** A socket that closes before `hello` may have been refused (a browser
 * cannot see the 401 of an upgrade): ask about the session, this often. */
const SESSION_CHECK_MS = 10000;

export class Connection {
  /**
   * @param {object} o
   *   room, after() -> newest id seen;
   *   onFrame(frame): every frame of the current socket, decoded
   *     (frames.js); frames that do not decode are dropped here;
   *   onState(state, detail): "connecting" | "connected" | "reconnecting"
   *     | "offline"; detail.retryAt (ms) while a retry is scheduled;
   *   onDown(): the socket closed (anything in flight is unsure);
   *   beforeReauth(): a `reauth` frame is about to go (it costs a token);
   *   onRevoked(): the room is no longer the reader's (4403, or
   *     roomGone() said so, optional: refresh.js); nothing reconnects.
   */
  constructor(o) {
    this.o = o;
    this.ws = null;
    this.helloSeen = false;
    this.state = "connecting";
    this.attempt = 0; // attempts since the connection was lost
    this.downSince = 0;
    this.timer = 0;
    this.retryAt = 0;
    this.stopped = false; // the session or the room is over: never reconnect
    this.leaving = false; // the page is going away
    this.refreshing = false;
    this.lastSessionCheck = 0;
    // The last session check said the instance is turning upgrades away.
    this.busy = false;
    this.expiresAt = 0;

    window.addEventListener("online", () => {
      if (this.isReady()) this.setState("connected");
      else this.retryNow();
    });
    // The socket may linger for a while after the network went: say so now.
    window.addEventListener("offline", () => {
      if (!this.stopped) this.setState("offline");
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && !this.ws && this.timer) this.retryNow();
    });
    window.addEventListener("pagehide", () => this.leave());
    window.addEventListener("pageshow", (ev) => {
      if (ev.persisted) this.resume();
    });
  }

  isReady() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN && this.helloSeen;
  }

  setState(state) {
    this.state = state;
    this.o.onState(state, { retryAt: this.timer ? this.retryAt : 0 });
  }

  url() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const after = this.o.after() || "0-0";
    return proto + "://" + location.host + "/ws?room=" + encodeURIComponent(this.o.room) +
      "&after=" + encodeURIComponent(after) + "&unread=1";
  }

  start() {
    this.setState(navigator.onLine === false ? "offline" : "connecting");
    this.connect();
  }

  connect() {
    this.cancelRetry();
    if (this.stopped || this.leaving) return;
    if (this.ws) return; // an attempt is under way
    this.helloSeen = false;
    let sock;
    try {
      sock = new WebSocket(this.url());
    } catch (e) {
      this.schedule();
      return;
    }
    this.ws = sock;
    // The countdown is over: an attempt is under way.
    if (this.state === "reconnecting") this.setState("reconnecting");
    let hello = false;
    sock.addEventListener("message", (ev) => {
      if (this.ws !== sock) return;
      const frame = decodeFrame(ev.data);
      if (!frame) return;
      if (frame.type === "hello") {
        hello = true;
        this.onHello(frame);
      } else if (frame.type === "reauthenticate") {
        this.onReauthenticate(frame);
      } else if (frame.type === "reauthenticated") {
        this.expiresAt = frame.expiresAt;
      }
      this.o.onFrame(frame);
    });
    sock.addEventListener("close", (ev) => {
      if (this.ws !== sock) return;
      this.onClose(ev, hello);
    });
  }

  onHello(frame) {
    this.helloSeen = true;
    this.attempt = 0;
    this.downSince = 0;
    this.busy = false;
    this.expiresAt = frame.expiresAt;
    this.setState("connected");
  }

  onClose(ev, hadHello) {
    this.ws = null;
    this.helloSeen = false;
    this.o.onDown();
    if (ev.code === 4401) return this.goLogin(closeReason(ev.reason));
    if (ev.code === 4403) return this.revoked();
    if (this.stopped || this.leaving) return;
    if (!this.downSince) this.downSince = Date.now();
    if (!hadHello && navigator.onLine !== false) this.checkSession();
    this.schedule();
  }

  /** The next attempt, on the schedule of reconnectDelay. */
  schedule() {
    if (this.stopped || this.leaving || this.timer) return;
    const offline = navigator.onLine === false;
    const visible = document.visibilityState === "visible";
    // Offline, the browser's "online" event brings the next attempt; a
    // slow retry covers a wrong report.
    const delay = offline ? 30000 : reconnectDelay(this.attempt, Date.now() - (this.downSince || Date.now()), visible);
    this.attempt += 1;
    this.retryIn(delay);
    this.setState(offline ? "offline" : "reconnecting");
  }

  retryIn(delay) {
    this.retryAt = Date.now() + delay;
    this.timer = setTimeout(() => {
      this.timer = 0;
      this.connect();
    }, delay);
  }

  /** The server is turning upgrades away: the next attempt no sooner than
   * `delay` ms from now (the countdown shows it). An attempt under way is
   * left alone: if it fails, the check after it says again. */
  postpone(delay) {
    if (this.stopped || this.leaving || this.ws) return;
    if (this.timer && this.retryAt >= Date.now() + delay) return;
    this.cancelRetry();
    this.retryIn(delay);
    this.setState(navigator.onLine === false ? "offline" : "reconnecting");
  }

  /** An attempt now: the "Retry now" button, the network or the tab back. */
  retryNow() {
    if (this.stopped || this.leaving || this.ws) return;
    this.connect();
  }

  /** The page is going away (navigation, a logout form, leaving the room):
   * close quietly. */
  leave() {
    this.leaving = true;
    this.cancelRetry();
    if (this.closeSocket("page hidden")) this.o.onDown();
  }

  /** The page stays after all (back from the cache, or leaving the room
   * failed): connect again. */
  resume() {
    if (this.stopped) return;
    this.leaving = false;
    this.retryNow();
  }

  cancelRetry() {
    clearTimeout(this.timer);
    this.timer = 0;
  }

  /** Closes and forgets the current socket; false when there was none. */
  closeSocket(reason) {
    const s = this.ws;
    if (!s) return false;
    this.ws = null;
    this.helloSeen = false;
    try {
      s.close(1000, reason);
    } catch (e) {
      /* already closing */
    }
    return true;
  }

  send(obj) {
    if (!this.isReady()) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  /** Never again: closes the socket, cancels any retry. */
  stop() {
    this.stopped = true;
    this.cancelRetry();
    this.closeSocket();
    this.setState("offline");
  }

  goLogin(reason) {
    this.stop();
    location.assign(loginUrl(reason, location.pathname));
  }

  revoked() {
    if (this.stopped) return;
    this.stop();
    this.o.onRevoked();
  }

  /** After sockets closed before `hello`: is the session over, is the
   * room no longer the reader's, or is the instance turning upgrades away?
   * While it is, every failed attempt asks again: that answer is good for
   * seconds, not for the interval between session checks. */
  checkSession() {
    const now = Date.now();
    if (now - this.lastSessionCheck < SESSION_CHECK_MS && !this.busy) return;
    this.lastSessionCheck = now;
    standing(this.o.roomGone).then((said) => {
      this.busy = said.retryAfter > 0;
      if (said.standing === "expired") this.goLogin("expired");
      else if (said.standing === "revoked") this.revoked();
      else if (this.busy) this.postpone(busyDelay(said.retryAfter));
    });
  }

  onReauthenticate(frame) {
    if (frame.expiresAt > 0) this.expiresAt = frame.expiresAt;
    this.refreshSession();
  }

  async refreshSession() {
    if (this.refreshing || this.stopped) return;
    this.refreshing = true;
    // The server closes the socket at expiresAt; if our clock disagrees
    // with the server's, still allow a few quick retries.
    const deadline = Math.max(this.expiresAt || 0, Date.now() + 20000);
    const got = await refresh(deadline, () => this.stopped).finally(() => { this.refreshing = false; });
    if (got.expired) {
      this.goLogin("expired");
    } else if (got.ok) {
      if (got.expiresAt !== undefined) this.expiresAt = got.expiresAt;
      if (this.isReady()) {
        this.o.beforeReauth();
        this.send({ type: "reauth" });
      }
    }
  }
}
