/* palaver: the keyboard's way through the messages. The whole list is one
 * tab stop (the last message's time, or the one last focused); the arrow
 * keys up and down, Home and End move between message times, each a <time>
 * whose accessible text is the full moment. Left from a time reaches the
 * name of its author, a link to a direct conversation (of the first
 * message of a run from one person: the others show no name); right goes
 * back to the time.
 */

export class TimeWalk {
  /** @param {HTMLOListElement} list  #messages */
  constructor(list) {
    this.list = list;
    list.addEventListener("keydown", (ev) => this.onKey(ev));
    list.addEventListener("focusin", (ev) => {
      const t = ev.target;
      if (t instanceof Element && t.classList.contains("msg-time")) this.rove(t);
    });
  }

  times() {
    return Array.from(this.list.querySelectorAll("li.msg .msg-time"));
  }

  /** Makes `time` the list's one tab stop. */
  rove(time) {
    for (const t of this.list.querySelectorAll('.msg-time[tabindex="0"]')) if (t !== time) t.tabIndex = -1;
    time.tabIndex = 0;
  }

  /** After the list changed: if its tab stop went, the newest time is it. */
  ensureTabStop() {
    if (this.list.querySelector('.msg-time[tabindex="0"]')) return;
    const times = this.times();
    if (times.length) times[times.length - 1].tabIndex = 0;
  }

  /** The author link shown for the message of `time`, if any. */
  author(time) {
    let li = time.closest("li.msg");
    while (li && li.classList.contains("cont")) li = li.previousElementSibling;
    return li ? li.querySelector("a.msg-user") : null;
  }

  onKey(ev) {
    let t = ev.target;
    if (!(t instanceof Element)) return;
    if (t.matches("a.msg-user")) {
      if (ev.key === "ArrowRight") {
        ev.preventDefault();
        t.closest("li.msg").querySelector(".msg-time").focus();
        return;
      }
      t = t.closest("li.msg").querySelector(".msg-time");
    } else if (!t.classList.contains("msg-time")) {
      return;
    } else if (ev.key === "ArrowLeft") {
      const a = this.author(t);
      if (a) {
        ev.preventDefault();
        a.focus();
      }
      return;
    }
    const times = this.times();
    const i = times.indexOf(t);
    let next = -1;
    if (ev.key === "ArrowUp") next = i - 1;
    else if (ev.key === "ArrowDown") next = i + 1;
    else if (ev.key === "Home") next = 0;
    else if (ev.key === "End") next = times.length - 1;
    else return;
    ev.preventDefault();
    if (next < 0 || next >= times.length) return;
    this.rove(times[next]);
    times[next].focus();
    times[next].scrollIntoView({ block: "nearest" });
  }
}
