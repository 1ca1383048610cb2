/* palaver: pure helpers, no DOM and no state. Message ids, dates in the
 * reader's time zone, the send pacer and the reconnect schedule, and the
 * sign-in page's address. Unit-tested in the browser journeys
 * (tests/it/browser/js/unit.js).
 */

/** Messages from one person closer together than this share one header. */
export const GROUP_MS = 5 * 60 * 1000;

/* ---------- message ids ("<ms>-<seq>", compared numerically) ---------- */

function cmpPart(a, b) {
  if (/^\d+$/.test(a) && /^\d+$/.test(b)) {
    a = a.replace(/^0+(?=\d)/, "");
    b = b.replace(/^0+(?=\d)/, "");
    if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Orders two message ids as numbers: "9-0" before "10-0". */
export function compareIds(a, b) {
  const pa = String(a).split("-");
  const pb = String(b).split("-");
  const n = Math.max(pa.length, pb.length);
  for (let i = 0; i < n; i++) {
    const c = cmpPart(pa[i] || "0", pb[i] || "0");
    if (c) return c;
  }
  return 0;
}

/* ---------- dates, in the reader's time zone ---------- */

/** The local calendar day of `ms`, as "YYYY-MM-DD". */
export function dayKey(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
}

/** Local midnight starting the day of `ms`. */
export function startOfDay(ms) {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

/** Local midnight ending the day of `ms` (DST-safe). */
export function nextMidnight(ms) {
  const d = new Date(startOfDay(ms));
  d.setDate(d.getDate() + 1);
  return d.getTime();
}

/** "Today", "Yesterday", or the date ("Monday, 23 November", with the year
 * when it is not this year's), for a day separator. */
export function dayLabel(ms, now, locale) {
  const key = dayKey(ms);
  if (key === dayKey(now)) return "Today";
  const y = new Date(startOfDay(now));
  y.setDate(y.getDate() - 1);
  if (key === dayKey(y.getTime())) return "Yesterday";
  const opts = { weekday: "long", month: "long", day: "numeric" };
  if (new Date(ms).getFullYear() !== new Date(now).getFullYear()) opts.year = "numeric";
  return new Date(ms).toLocaleDateString(locale, opts);
}

/** "14:03" (or "2:03 PM"), as the reader's locale writes it. */
export function timeLabel(ms, locale) {
  return new Date(ms).toLocaleTimeString(locale, { hour: "2-digit", minute: "2-digit" });
}

/** The whole moment: "Monday, 23 November 2026 at 14:03:12". */
export function fullLabel(ms, locale) {
  return new Date(ms).toLocaleString(locale, { dateStyle: "full", timeStyle: "medium" });
}

/** Whether a message by `user` at `at` continues the group of the one
 * before it (`prevUser` at `prevAt`): same person, same day, within
 * GROUP_MS. */
export function continues(prevUser, prevAt, user, at) {
  return prevUser === user && at >= prevAt - 1000 && at - prevAt < GROUP_MS && dayKey(at) === dayKey(prevAt);
}

/* ---------- pacing ---------- */

/**
 * The client's copy of the server's per-socket token bucket
 * (docs/protocol.md §3.6): `perSec` sustained, `burst` at once. It runs a
 * little below the server's numbers (90 % of the rate, one token less), so
 * that timing differences between the two never make the server refuse.
 */
export class Pacer {
  constructor(perSec, burst, now) {
    this.set(perSec, burst, now);
  }

  set(perSec, burst, now) {
    const rate = Number(perSec) > 0 ? Number(perSec) : 10;
    const size = Number(burst) >= 1 ? Math.floor(Number(burst)) : 20;
    this.perMs = (rate * 0.9) / 1000;
    this.capacity = Math.max(1, size - 1);
    this.reset(now);
  }

  /** A new socket starts with a full bucket on the server. */
  reset(now) {
    this.tokens = this.capacity;
    this.at = now;
  }

  refill(now) {
    if (now > this.at) this.tokens = Math.min(this.capacity, this.tokens + (now - this.at) * this.perMs);
    this.at = Math.max(this.at, now);
  }

  /** Milliseconds until a frame may go (0: now). */
  wait(now) {
    this.refill(now);
    return this.tokens >= 1 ? 0 : Math.ceil((1 - this.tokens) / this.perMs);
  }

  /** Counts a frame that went (a `send` or a `reauth`); may go below zero. */
  take(now) {
    this.refill(now);
    this.tokens -= 1;
  }

  /** The server refused: its bucket is emptier than ours thought. */
  drain(now) {
    this.refill(now);
    this.tokens = Math.min(this.tokens, 0);
  }
}

/* ---------- reconnecting ---------- */

/** While visible, retry every 1 to 1.5 s for this long after the drop. */
export const EAGER_MS = 60 * 1000;
export const BACKOFF_CAP = 30 * 1000;

/**
 * How long to wait before reconnect attempt number `attempt` (0 for the
 * first after a drop), `downFor` ms after the connection was lost. A
 * visible page retries quickly, with jitter so that a restarted server is
 * not met by everyone at once: at once-ish (up to 0.5 s) first, then every
 * 1 to 1.5 s for the first minute, then backing off towards 30 s. A hidden
 * page backs off with full jitter from the start (0.5 s × 2^attempt, at
 * most 30 s); it retries at once when it is shown again.
 */
export function reconnectDelay(attempt, downFor, visible, random) {
  const r = typeof random === "number" ? random : Math.random();
  if (!visible) return Math.round(r * Math.min(BACKOFF_CAP, 500 * 2 ** Math.min(attempt, 16)));
  if (attempt === 0) return Math.round(r * 500);
  if (downFor < EAGER_MS) return Math.round(1000 + r * 500);
  const past = Math.max(0, Math.floor(Math.log2(Math.max(1, (downFor - EAGER_MS) / 2000))) + 1);
  const ceiling = Math.min(BACKOFF_CAP, 2000 * 2 ** Math.min(past, 16));
  return Math.round(ceiling / 2 + (r * ceiling) / 2);
}

/**
 * How long to wait before the next upgrade when the server said it is
 * turning upgrades away for `retryAfter` seconds: at least that, plus up
 * to a second of our own jitter, so that clients told the same second do
 * not all come back at its start.
 */
export function busyDelay(retryAfter, random) {
  const r = typeof random === "number" ? random : Math.random();
  return Math.round(retryAfter * 1000 + r * 1000);
}

/** What a 4401 close's reason means for the sign-in page (`?reason=`). */
export function closeReason(text) {
  const t = String(text || "").toLowerCase();
  if (t.includes("logged out")) return "logged_out";
  if (t.includes("expired")) return "expired";
  if (t.includes("revoked")) return "revoked";
  return "";
}

/** The sign-in page's address, back to `path` afterwards. */
export function loginUrl(reason, path) {
  const q = new URLSearchParams();
  if (reason) q.set("reason", reason);
  if (path && path.startsWith("/") && !path.startsWith("//")) q.set("next", path);
  const s = q.toString();
  return "/login" + (s ? "?" + s : "");
}
