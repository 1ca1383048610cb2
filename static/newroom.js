/* palaver: starting something from the sidebar (SPEC §6). A new room, by
 * name, private (only the people its members add) unless the reader
 * chooses public: POST /api/rooms, then its page. A conversation with
 * someone, by username: POST /api/direct, then its page (`/chat/@bob`).
 * Both are SideForms; the server's refusals (a name taken, nobody by that
 * name, too many new rooms) are said in the form, in its words.
 */

import * as api from "./api.js";
import { directHref, roomHref, validLabel, validRoomName, validUsername } from "./labels.js";
import { SideForm } from "./sideform.js";

const ROOM_RULE = "Room names are 1 to 32 characters: a to z, 0 to 9 and -.";
const USER_RULE = "Usernames are 3 to 32 characters: letters, digits, _ . and -.";

/**
 * The sidebar's "Open a room by name" field: a name the browser refuses
 * is refused with the rule, not with the browser's "Please match the
 * requested format". Capitals are fine: the server opens the name in
 * lower case.
 */
export function setupOpenRoom(input) {
  if (!input) return;
  input.title = ROOM_RULE;
  input.addEventListener("invalid", () => input.setCustomValidity(ROOM_RULE));
  input.addEventListener("input", () => input.setCustomValidity(""));
}

/**
 * "New room…": `els` {toggle, form, input, error, cancel}; the form's
 * radio buttons named `visibility` say "private" or "public".
 */
export function setupNewRoom(els, go) {
  const name = () => els.input.value.trim().toLowerCase();
  return new SideForm({
    ...els,
    go,
    check: () => (validRoomName(name()) ? "" : ROOM_RULE),
    submit: async () => {
      const room = name();
      const chosen = els.form.querySelector('input[name="visibility"]:checked');
      const visibility = chosen && chosen.value === "public" ? "public" : "private";
      const got = await api.createRoom(room, visibility);
      const created = got.data && typeof got.data.name === "string" && validRoomName(got.data.name) ? got.data.name : room;
      return { ok: got.ok, message: got.message, href: roomHref(created) };
    },
  });
}

/** "Message someone…": `els` {toggle, form, input, error, cancel}; `me`
 * the signed-in user. */
export function setupNewDirect(els, me, go) {
  const user = () => els.input.value.trim().replace(/^@/, "");
  return new SideForm({
    ...els,
    go,
    check: () => {
      if (!validUsername(user())) return USER_RULE;
      return user().toLowerCase() === me.toLowerCase() ? "That is you: write to someone else." : "";
    },
    submit: async () => {
      const who = user();
      const got = await api.startDirect(who);
      const room = got.data && typeof got.data.room === "string" && validLabel(got.data.room) ? got.data.room : "";
      return { ok: got.ok, message: got.message, href: room ? roomHref(room) : directHref(who) };
    },
  });
}
