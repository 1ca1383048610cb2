/* palaver: a small form behind a button in the sidebar, a disclosure
 * ("New room…", "Message someone…"). The button shows and hides it and
 * says which (aria-expanded); opening it puts focus in its field; Escape or
 * Cancel closes it and focus goes back to the button. A submit is checked
 * here first, then sent; what went wrong is said in the form (role=alert)
 * with the field marked invalid and focused again; success opens a page.
 */

export class SideForm {
  /**
   * @param {object} o
   *   toggle: the button (hidden until this runs: nothing to open without
   *   JavaScript); form; input: its text field; error: a role=alert
   *   element the field is described by; cancel: a button;
   *   check() -> a sentence saying what is wrong, or "";
   *   submit() -> Promise<{ok, message, href}>: what the server said,
   *   and on success the page to open;
   *   go(href): opens it (location.assign).
   */
  constructor(o) {
    this.o = o;
    this.busy = false;
    o.toggle.hidden = false;
    o.toggle.setAttribute("aria-expanded", "false");
    o.toggle.addEventListener("click", () => this.set(o.form.hidden, false));
    o.cancel.addEventListener("click", () => this.set(false, true));
    o.form.addEventListener("keydown", (ev) => {
      if (ev.key !== "Escape") return;
      // Only this form closes (not the phone menu around it).
      ev.preventDefault();
      ev.stopPropagation();
      this.set(false, true);
    });
    o.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.send();
    });
    o.input.addEventListener("input", () => this.showError(""));
  }

  /** Opens or closes the form; `focusBack` returns focus to the button. */
  set(open, focusBack) {
    this.o.form.hidden = !open;
    this.o.toggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) {
      this.o.input.focus();
    } else {
      this.showError("");
      if (focusBack) this.o.toggle.focus();
    }
  }

  showError(text) {
    const error = this.o.error;
    if (text) this.o.input.setAttribute("aria-invalid", "true");
    else this.o.input.removeAttribute("aria-invalid");
    if (text && error.textContent === text) {
      // The same words again are still said: clear, then set.
      error.textContent = "";
      requestAnimationFrame(() => { error.textContent = text; });
    } else {
      error.textContent = text;
    }
  }

  async send() {
    if (this.busy) return;
    const wrong = this.o.check();
    if (wrong) {
      this.refuse(wrong);
      return;
    }
    this.busy = true;
    this.o.form.setAttribute("aria-busy", "true");
    let got;
    try {
      got = await this.o.submit();
    } finally {
      this.busy = false;
      this.o.form.removeAttribute("aria-busy");
    }
    if (got.ok) this.o.go(got.href);
    else this.refuse(got.message);
  }

  refuse(text) {
    this.showError(text);
    this.o.input.focus();
    this.o.input.select();
  }
}
