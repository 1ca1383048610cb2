/* palaver: the members of a private room (SPEC §6), in a modal dialog
 * opened from the room's header. It lists them with their roles, adds
 * someone by username (any member may), removes a member (the owner may),
 * and leaves the room, asking first. Focus moves into the dialog when it
 * opens and back to the header's button when it closes (Escape too);
 * errors are said in it (role=alert), what was done in a status region.
 *
 * Leaving closes this page's socket quietly first: the server closes
 * every socket of a member who is no longer one with 4403, which this page
 * would otherwise take for being removed.
 */

import * as api from "./api.js";
import { directHref, lobbyAfter, roomTitle, validUsername } from "./labels.js";

const ROLES = { owner: "Owner", member: "Member" };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const same = (a, b) => a.toLowerCase() === b.toLowerCase();

export class MembersPanel {
  /**
   * @param {object} o
   *   opener: the header's button; dialog: the <dialog>, holding
   *   #members-list, #members-count, #members-status, #members-error,
   *   #members-add (a form with #members-add-name), #members-leave,
   *   #members-confirm (#members-confirm-text, -yes, -no), #members-close;
   *   room: the room's label; me: the signed-in user;
   *   quiet(): closes the page's socket without a word; resume(): opens
   *   it again; go(href): leaves the page.
   */
  constructor(o) {
    this.o = o;
    this.members = [];
    const part = (id) => o.dialog.querySelector("#members-" + id);
    this.list = part("list");
    this.count = part("count");
    this.status = part("status");
    this.error = part("error");
    this.addForm = part("add");
    this.addInput = part("add-name");
    this.leaveButton = part("leave");
    this.confirm = part("confirm");
    this.title = roomTitle(o.room);

    o.opener.hidden = false;
    o.opener.addEventListener("click", () => this.open());
    part("close").addEventListener("click", () => o.dialog.close());
    o.dialog.addEventListener("close", () => {
      this.confirm.hidden = true;
      this.sayError("");
      o.opener.focus();
    });
    this.addForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.add();
    });
    this.list.addEventListener("click", (ev) => {
      const button = ev.target instanceof Element ? ev.target.closest("button[data-user]") : null;
      if (button) this.remove(button.dataset.user);
    });
    this.leaveButton.addEventListener("click", () => this.askLeave());
    part("confirm-no").addEventListener("click", () => {
      this.confirm.hidden = true;
      this.leaveButton.focus();
    });
    part("confirm-yes").addEventListener("click", () => this.leave());
  }

  open() {
    if (typeof this.o.dialog.showModal !== "function") return;
    this.o.dialog.showModal();
    this.addInput.focus();
    return this.load();
  }

  myRole() {
    const mine = this.members.find((m) => same(m.user, this.o.me));
    return mine ? mine.role : "";
  }

  async load() {
    this.list.setAttribute("aria-busy", "true");
    const got = await api.members(this.o.room);
    this.list.removeAttribute("aria-busy");
    if (!got.ok) {
      this.sayError(got.message);
      return;
    }
    const listed = got.data && Array.isArray(got.data.members) ? got.data.members : [];
    this.members = listed.filter((m) => m && typeof m.user === "string" && Object.hasOwn(ROLES, m.role));
    this.render();
  }

  /** The owner first, then by name. */
  render() {
    const owner = this.myRole() === "owner";
    const rank = (m) => (m.role === "owner" ? 0 : 1);
    const sorted = this.members.slice().sort((a, b) => rank(a) - rank(b) || a.user.localeCompare(b.user));
    const frag = document.createDocumentFragment();
    for (const m of sorted) {
      const li = el("li", "member");
      li.dataset.user = m.user;
      const me = same(m.user, this.o.me);
      let name;
      if (me) {
        name = el("span", "member-name", m.user + " (you)");
      } else {
        name = el("a", "member-name", m.user);
        name.href = directHref(m.user);
        name.title = "Message " + m.user;
      }
      li.append(name, el("span", "member-role", ROLES[m.role]));
      if (owner && !me) {
        const remove = el("button", "btn btn-small btn-outline-danger", "Remove");
        remove.type = "button";
        remove.dataset.user = m.user;
        remove.setAttribute("aria-label", "Remove " + m.user);
        li.append(remove);
      }
      frag.append(li);
    }
    this.list.replaceChildren(frag);
    const n = this.members.length;
    this.count.textContent = n === 1 ? "1 member" : n + " members";
  }

  async add() {
    const user = this.addInput.value.trim().replace(/^@/, "");
    if (!validUsername(user)) {
      this.refuse("Usernames are 3 to 32 characters: letters, digits, _ . and -.");
      return;
    }
    const got = await api.addMember(this.o.room, user);
    if (!got.ok) {
      this.refuse(got.message);
      return;
    }
    this.addInput.value = "";
    this.addInput.removeAttribute("aria-invalid");
    this.sayError("");
    this.say(user + " can now see " + this.title + ".");
    await this.load();
  }

  async remove(user) {
    const rows = Array.from(this.list.querySelectorAll("button[data-user]"));
    const at = rows.findIndex((b) => b.dataset.user === user);
    const got = await api.removeMember(this.o.room, user);
    if (!got.ok) {
      this.sayError(got.message);
      return;
    }
    this.sayError("");
    this.say(user + " was removed from " + this.title + ".");
    await this.load();
    // Focus stays in the list where the row was, else goes to the field.
    const left = this.list.querySelectorAll("button[data-user]");
    const next = left[Math.min(at, left.length - 1)];
    (next || this.addInput).focus();
  }

  askLeave() {
    const others = this.members.filter((m) => !same(m.user, this.o.me)).length;
    let text = "Leave " + this.title + "? You will no longer see it or its messages, unless a member adds you again.";
    if (this.members.length && !others) text += " You are its last member: the room and its messages will be deleted.";
    else if (this.myRole() === "owner") text += " The longest-standing member becomes its owner.";
    this.confirm.querySelector("#members-confirm-text").textContent = text;
    this.confirm.hidden = false;
    this.confirm.querySelector("#members-confirm-no").focus();
  }

  async leave() {
    this.o.quiet();
    const got = await api.removeMember(this.o.room, this.o.me);
    if (got.ok) {
      this.o.go(lobbyAfter("left", this.o.room));
      return;
    }
    this.o.resume();
    this.confirm.hidden = true;
    this.sayError(got.message);
    this.leaveButton.focus();
  }

  refuse(text) {
    this.addInput.setAttribute("aria-invalid", "true");
    this.sayError(text);
    this.addInput.focus();
  }

  sayError(text) {
    this.error.textContent = text;
  }

  say(text) {
    this.status.textContent = "";
    requestAnimationFrame(() => { this.status.textContent = text; });
  }
}
