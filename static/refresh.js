/* palaver: staying signed in, over HTTP (docs/protocol.md §3.5). The
 * session is refreshed with POST /session/refresh when the socket says
 * `reauthenticate`, and asked about when sockets keep closing before
 * `hello`: a browser cannot see the status of a refused upgrade, so a 401
 * here (the session is over), a room the reader may no longer see, or a
 * `Retry-After` (the instance is turning upgrades away) is how the page
 * learns why. connection.js acts on the answers.
 */

/** Refresh attempts before giving up until the next `reauthenticate`. */
const ATTEMPTS = 6;

function postRefresh() {
  return fetch("/session/refresh", {
    method: "POST",
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  }).catch(() => null);
}

/**
 * Refreshes the session, retrying a few times with backoff while there is
 * time before `deadline` (ms) and `stopped()` is false. Resolves to
 * `{expired: true}` (401: sign in again), `{ok: true, expiresAt}` (the new
 * expiry when the answer gave one, else undefined), or `{}` (gave up).
 */
export async function refresh(deadline, stopped) {
  for (let i = 0; i < ATTEMPTS && !stopped(); i++) {
    const res = await postRefresh();
    if (res && res.status === 401) return { expired: true };
    if (res && res.ok) {
      const body = await res.json().catch(() => null);
      const at = body && Number.isFinite(Number(body.expires_at)) ? Number(body.expires_at) : undefined;
      return { ok: true, expiresAt: at };
    }
    const wait = Math.min(4000, 250 * 2 ** i) * (0.5 + Math.random() / 2);
    if (Date.now() + wait >= deadline - 1000) return {};
    await new Promise((r) => setTimeout(r, wait));
  }
  return {};
}

/** The whole seconds of a `Retry-After` header, 0 when there is none. */
function retryAfter(res) {
  const secs = Number.parseInt((res && res.headers.get("Retry-After")) || "", 10);
  return Number.isFinite(secs) && secs > 0 ? secs : 0;
}

/**
 * After sockets closed before `hello`. `standing`: "expired" when the
 * session is over, "revoked" when the session is fine but `roomGone()`
 * (optional, resolving to a bool) says the room is no longer the reader's,
 * else "unknown". `retryAfter`: seconds to wait before the next upgrade
 * while the instance is turning upgrades away (0 when it is not).
 */
export async function standing(roomGone) {
  const res = await postRefresh();
  const wait = retryAfter(res);
  if (res && res.status === 401) return { standing: "expired", retryAfter: wait };
  if (res && res.ok && roomGone && (await roomGone())) return { standing: "revoked", retryAfter: wait };
  return { standing: "unknown", retryAfter: wait };
}
