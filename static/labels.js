/* palaver: rooms as the page names them, pure (no DOM, no state). A room's
 * label is what its frames carry and `data-room` holds: a room's name
 * (`deploys`) or, for a direct conversation, `@` and the other person's
 * name (`@bob`). Unit-tested in the browser journeys
 * (tests/it/browser/js/unit.js).
 */

const ROOM_NAME = /^[a-z0-9-]{1,32}$/;
const USERNAME = /^[A-Za-z0-9_.-]{3,32}$/;

/** A room name as the server takes it (src/model.rs RoomName::parse). */
export function validRoomName(name) {
  return typeof name === "string" && ROOM_NAME.test(name);
}

/** A username as the server takes it (src/model.rs valid_username). */
export function validUsername(name) {
  return typeof name === "string" && USERNAME.test(name);
}

/** Whether `label` names a direct conversation. */
export function isDirect(label) {
  return typeof label === "string" && label.startsWith("@");
}

/** The label of the conversation with `user`. */
export function directLabel(user) {
  return "@" + user;
}

/** A label the page may show and link to: a room name or `@` + a username. */
export function validLabel(label) {
  return isDirect(label) ? validUsername(label.slice(1)) : validRoomName(label);
}

/** How the page writes a room: "#deploys", or "@bob" for a conversation. */
export function roomTitle(label) {
  return isDirect(label) ? label : "#" + label;
}

/** The page of a room. */
export function roomHref(label) {
  return isDirect(label) ? "/chat/@" + encodeURIComponent(label.slice(1)) : "/chat/" + encodeURIComponent(label);
}

/** The page of the conversation with `user`. */
export function directHref(user) {
  return roomHref(directLabel(user));
}

/* ---------- arriving in the lobby after leaving a room ---------- */

/** Why the page left a room, as the lobby's query says it. */
const WHY = {
  removed: (title) => "You were removed from " + title + ".",
  left: (title) => "You left " + title + ".",
};

/** The lobby's address after this page left `label`, `why` being
 * "removed" (its access was revoked) or "left" (the reader chose to). */
export function lobbyAfter(why, label) {
  return "/chat/lobby?" + new URLSearchParams([[why, label]]).toString();
}

/**
 * The sentence for a lobby reached through `lobbyAfter`, from the page's
 * query string (`location.search`); null for anything else. Only a valid
 * label is ever shown, and only as text.
 */
export function arrivalNotice(search) {
  const query = new URLSearchParams(typeof search === "string" ? search : "");
  for (const [why, say] of Object.entries(WHY)) {
    const label = query.get(why);
    if (label !== null && validLabel(label)) return say(roomTitle(label));
  }
  return null;
}
