/* palaver: the JSON routes the page calls (docs/protocol.md, SPEC §6):
 * rooms, their members, direct conversations. The session cookie goes
 * along (same origin); the browser adds `Origin` to a POST, PUT or DELETE
 * and `Sec-Fetch-Site` to a GET, which is what the server checks.
 *
 * Every call resolves, never rejects, to `{ok, status, data, message}`:
 * `data` the JSON body (null for 204), `message` the sentence to show when
 * not ok: the server's own (`{"error", "message"}`), else one for the
 * status.
 */

const FALLBACK = {
  0: "Could not reach palaver. Check your connection and try again.",
  401: "You are signed out. Reload the page to sign in again.",
  403: "You are not allowed to do that.",
  404: "Not found.",
  409: "That is not possible right now.",
  422: "That is not valid.",
  429: "Too many attempts. Try again later.",
};

/** One request; `body`, when given, goes as JSON. */
export async function call(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    return { ok: false, status: 0, data: null, message: FALLBACK[0] };
  }
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (res.ok) return { ok: true, status: res.status, data, message: "" };
  const said = data && typeof data.message === "string" && data.message ? data.message : "";
  const fallback = FALLBACK[res.status] || "Something went wrong (" + res.status + "). Try again.";
  return { ok: false, status: res.status, data, message: said || fallback };
}

const seg = encodeURIComponent;

/** POST /api/rooms: `visibility` "private" or "public". */
export function createRoom(name, visibility) {
  return call("POST", "/api/rooms", { name, visibility });
}

/** GET /api/rooms/{name}/members: `data.members` [{user, role}]. */
export function members(room) {
  return call("GET", "/api/rooms/" + seg(room) + "/members");
}

/** PUT /api/rooms/{name}/members/{user}: any member adds someone. */
export function addMember(room, user) {
  return call("PUT", "/api/rooms/" + seg(room) + "/members/" + seg(user));
}

/** DELETE /api/rooms/{name}/members/{user}: the owner removes anyone; a
 * member removes themselves (leaves). */
export function removeMember(room, user) {
  return call("DELETE", "/api/rooms/" + seg(room) + "/members/" + seg(user));
}

/** POST /api/direct: `data.room` is the conversation's label ("@bob"). */
export function startDirect(user) {
  return call("POST", "/api/direct", { user });
}

/** Whether the reader may still see the room whose history is at `url`
 * (404 when not); true when the answer says nothing either way. */
export async function roomVisible(url) {
  if (!url) return true;
  try {
    const res = await fetch(url + "?limit=1", { credentials: "same-origin", headers: { Accept: "application/json" } });
    return res.status !== 404;
  } catch (e) {
    return true;
  }
}
