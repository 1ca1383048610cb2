/* palaver: the server's frames (docs/protocol.md §3.2), checked once where
 * they arrive. `decodeFrame` turns a text frame into a frozen object with
 * camelCase fields of known types, or null: not JSON, not an object, an
 * unknown `type`, a required field missing, or any field of the wrong type.
 * Everything after it trusts what it is given.
 *
 * Optional fields (absent or null on the wire) get a fixed value instead:
 * `clientId` "" when the frame is about no message of ours, `rate` null and
 * `readMarkers` false from a server that does not announce them (both
 * extend the hello of the contract). Fields the client does not know are
 * ignored, so the server may add some.
 */

/** A field that fails its check. */
const WRONG = Symbol("wrong");

const string = (v) => (typeof v === "string" ? v : WRONG);
/** A message id: "<ms>-<seq>", never empty. */
const id = (v) => (typeof v === "string" && v !== "" ? v : WRONG);
/** Unix milliseconds. */
const time = (v) => (Number.isSafeInteger(v) && v >= 0 ? v : WRONG);
const count = (v) => (Number.isSafeInteger(v) && v >= 0 ? v : WRONG);
const flag = (v) => (typeof v === "boolean" ? v : WRONG);
/** User names: a list of strings. */
const names = (v) => (Array.isArray(v) && v.every((n) => typeof n === "string") ? Object.freeze(v.slice()) : WRONG);
/** The pace to send at (§3.6): `{per_sec > 0, burst >= 1}`. */
const rate = (v) => {
  if (!v || typeof v !== "object" || Array.isArray(v)) return WRONG;
  const perSec = v.per_sec;
  const burst = v.burst;
  if (!(Number.isFinite(perSec) && perSec > 0) || !(Number.isSafeInteger(burst) && burst >= 1)) return WRONG;
  return Object.freeze({ perSec, burst });
};
/** A room as the page names it (labels.js): never empty. */
const label = (v) => (typeof v === "string" && v !== "" ? v : WRONG);
/** One of a fixed set of words. */
const oneOf = (...words) => (v) => (words.includes(v) ? v : WRONG);
const optional = (check, absent) => (v) => (v === undefined || v === null ? absent : check(v));

/** Each frame type's fields, by their name on the wire. */
const FRAMES = {
  hello: {
    user: string,
    room: string,
    expires_at: time,
    rate: optional(rate, null),
    read_markers: optional(flag, false),
  },
  presence: { room: string, online: names, count },
  presence_diff: { room: string, joined: names, left: names, count },
  message: {
    room: string,
    id,
    user: string,
    body: string,
    sent_at: time,
    client_id: optional(string, ""),
  },
  ack: { id, client_id: optional(string, "") },
  unread: { room: string, unread: count, mentions: count },
  reauthenticate: { expires_at: time },
  reauthenticated: { expires_at: time },
  error: { code: string, message: string, client_id: optional(string, "") },
  // The reader's membership changed (SPEC §6), told to their other sockets.
  room_added: { room: label, visibility: oneOf("public", "private", "direct") },
  room_removed: { room: label },
};

const camel = (wire) => wire.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

/**
 * One server frame, from the text of a WebSocket message, as
 * `{type, ...fields}` with the fields renamed to camelCase
 * (`sent_at` → `sentAt`); null when it is not one.
 */
export function decodeFrame(text) {
  if (typeof text !== "string") return null;
  let raw;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    return null;
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return null;
  const fields = Object.hasOwn(FRAMES, raw.type) ? FRAMES[raw.type] : null;
  if (!fields) return null;
  const frame = { type: raw.type };
  for (const [wire, check] of Object.entries(fields)) {
    const value = check(raw[wire]);
    if (value === WRONG) return null;
    frame[camel(wire)] = value;
  }
  return Object.freeze(frame);
}
