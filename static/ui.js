/* palaver: the page around the conversation. The phone menu (a real
 * button: Escape and a tap outside close it, aria-expanded follows) and the
 * "Log out everywhere" confirmation (a modal <dialog>).
 */

/** The phone menu. On wide screens the sidebar is always shown and the
 * button is hidden by CSS. */
export function setupMenu(app, toggle, sidebar) {
  if (!toggle || !sidebar) return;
  const isOpen = () => app.classList.contains("nav-open");
  const set = (open, focusBack) => {
    app.classList.toggle("nav-open", open);
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) {
      const first = sidebar.querySelector("a, button, input");
      if (first) first.focus();
    } else if (focusBack) {
      toggle.focus();
    }
  };
  toggle.addEventListener("click", () => set(!isOpen(), false));
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && isOpen()) {
      ev.preventDefault();
      set(false, true);
    }
  });
  // A tap or click anywhere outside the menu (and its button) closes it.
  document.addEventListener("pointerdown", (ev) => {
    if (!isOpen()) return;
    const t = ev.target;
    if (t instanceof Node && (sidebar.contains(t) || toggle.contains(t))) return;
    set(false, false);
  });
  // Leaving the menu with Tab on a phone closes it too.
  sidebar.addEventListener("focusout", (ev) => {
    const to = ev.relatedTarget;
    if (isOpen() && to instanceof Node && !sidebar.contains(to) && !toggle.contains(to)) set(false, false);
  });
}

/** "Log out everywhere" asks first, in a modal dialog (focus moves into it,
 * Escape or Cancel closes it and returns focus to the button). */
export function setupLogoutEverywhere(form, dialog, cancel, onLeave) {
  if (!form || !dialog || typeof dialog.showModal !== "function") return;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    dialog.showModal();
  });
  if (cancel) cancel.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    const button = form.querySelector("button");
    if (button) button.focus();
  });
  for (const f of dialog.querySelectorAll("form")) f.addEventListener("submit", onLeave);
}
