/* palaver chat client: the entry module of the chat page.
 * Plain JavaScript modules, no framework, no build step, no dependencies.
 * They run under the app's strict Content-Security-Policy (no inline
 * code, no eval) and put user data in the page as text only.
 *
 *   format.js      pure helpers: ids, dates, pacing, schedule, sign-in URL
 *   text.js        message text: as stored, as tokens, mentions
 *   connection.js  the socket's life: backoff, reconnecting, reauth, 4401
 *   outbox.js      our messages: strict order, pacing, retries
 *   render.js      the one place a message becomes markup; days, groups
 *   walk.js        one tab stop for the list; arrows walk message times
 *   history.js     older messages, a page at a time, back to the room's start
 *   attention.js   following along, announcements, mentions, unread
 *   ui.js          phone menu, logout-everywhere dialog, drafts
 *
 * This file wires them to the page and to the server's frames.
 */

import { compareIds } from "./format.js";
import { bodyLength, cleanBody, MAX_BODY, mentionsName } from "./text.js";
import { Connection } from "./connection.js";
import { Outbox } from "./outbox.js";
import { Renderer } from "./render.js";
import { History } from "./history.js";
import { Attention } from "./attention.js";
import { Drafts, setupLogoutEverywhere, setupMenu } from "./ui.js";

document.documentElement.classList.remove("no-js");

const root = document.getElementById("chat");
if (root) start(root);

function start(root) {
  const ROOM = root.dataset.room || "lobby";
  const ME = root.dataset.user || "";
  const MAX_DOM = 500; // messages kept in the page while following along
  const NOTICE_MS = 6000;
  const LABELS = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    offline: "Offline",
  };
  const FALLBACK_ERRORS = {
    rate_limited: "You are sending messages too fast. Please wait a moment.",
    unavailable: "Chat could not confirm your message. Try again: it will not be sent twice.",
    invalid: "That message could not be sent.",
  };

  const $ = (id) => document.getElementById(id);
  const log = $("log");
  const list = $("messages");
  const input = $("message-input");
  const form = $("composer");
  const connEl = $("conn-state");
  const banner = $("conn-banner");
  const bannerText = $("conn-banner-text");
  const live = $("conn-live");
  const noticeEl = $("notice");
  const onlineList = $("online");
  const onlineCount = $("online-count");
  const onlineStale = $("online-stale");
  const emptyState = $("empty-state");
  const outboxBar = $("outbox-bar");
  const outboxText = $("outbox-text");

  let lastId = root.dataset.lastId || "";
  let currentState = "connecting";
  let wasConnected = false;
  let replayUntil = 0;
  let noticeTimer = 0;
  let countdown = 0;
  // Read markers: only sent when the hello says the server
  // takes them (`"read_markers": true`); an unknown frame type would be
  // refused as invalid.
  let readMarkers = false;
  let readSent = "";
  let readTimer = 0;
  const lis = new Map(); // client_id -> li of our unconfirmed messages
  // sender + client_id -> the first id seen, for the last SEEN_SENDS
  // messages that carried one: a message stored twice (our resend after a
  // lost ack, or anyone's after a store failover lost the copy shown) is
  // shown once.
  const seenSends = new Map();
  const SEEN_SENDS = 1000;

  const renderer = new Renderer(list, ME);
  const attention = new Attention({
    log,
    list,
    room: ROOM,
    me: ME,
    jump: $("jump-new"),
    announcer: $("announcer"),
    notifyButton: $("notify-toggle"),
    rooms: $("rooms"),
    onBottom: () => markRead(),
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) markRead();
  });

  const outbox = new Outbox({
    send: (frame) => connection.send(frame),
    onChange: (entry) => {
      const li = lis.get(entry.cid);
      if (li) renderer.setStatus(li, entry.shown, entry.reason);
    },
    onDone: () => {},
    onSummary: () => {
      const failed = outbox.failedCount();
      outboxBar.hidden = failed === 0;
      if (failed) {
        const waiting = outbox.size - failed;
        outboxText.textContent = (failed === 1 ? "1 message was not sent." : failed + " messages were not sent.") +
          (waiting ? " " + waiting + " more waiting behind." : "");
      }
    },
  });

  const connection = new Connection({
    room: ROOM,
    after: () => lastId,
    onFrame: handleFrame,
    onState: showState,
    onDown: () => outbox.disconnected(),
    beforeReauth: () => outbox.spend(),
  });

  function noteId(id) {
    if (!lastId || compareIds(id, lastId) > 0) lastId = id;
  }

  /* ---------- frames ---------- */

  function handleFrame(f) {
    switch (f.type) {
      case "hello":
        replayUntil = Date.now() + 1000;
        readMarkers = f.read_markers === true;
        readSent = "";
        outbox.connected(f.rate);
        markRead();
        break;
      case "message": onMessage(f); break;
      case "ack": onAck(f); break;
      case "presence": onPresence(f); break;
      case "presence_diff": onPresenceDiff(f); break;
      case "error": onError(f); break;
      case "unread": attention.unread(f); break;
      default: break;
    }
  }

  /** The first id seen for `user`'s message `cid`; `id` if it is the first. */
  function firstId(user, cid, id) {
    const key = user + "\n" + cid;
    const first = seenSends.get(key);
    if (first) return first;
    seenSends.set(key, id);
    if (seenSends.size > SEEN_SENDS) seenSends.delete(seenSends.keys().next().value);
    return id;
  }

  /** Our message `cid` is stored as `id`: confirm its line in place. */
  function settle(cid, id, sentAt) {
    const li = lis.get(cid);
    lis.delete(cid);
    outbox.confirmed(cid);
    firstId(ME, cid, id);
    if (!li) return;
    const other = renderer.byId(id);
    if (other && other !== li) {
      li.remove();
      renderer.layout();
    } else {
      renderer.confirm(li, id, sentAt);
    }
  }

  function onMessage(f) {
    if (typeof f.id !== "string" || !f.id) return;
    if (f.room && f.room !== ROOM) return;
    noteId(f.id);
    const cid = typeof f.client_id === "string" ? f.client_id : "";
    if (cid && outbox.find(cid)) {
      settle(cid, f.id, f.sent_at);
      return;
    }
    if (renderer.byId(f.id)) return;
    const m = {
      id: f.id,
      user: String(f.user || ""),
      body: String(f.body || ""),
      sentAt: Number(f.sent_at) || Date.now(),
    };
    // A message seen before under another id: stored twice.
    if (cid && firstId(m.user, cid, f.id) !== f.id) return;
    const near = attention.nearBottom();
    renderer.place(renderer.message(m));
    trim(near);
    showEmpty();
    if (m.user === ME) {
      if (near) attention.scrollToBottom(true);
      return;
    }
    attention.arrived(m, near, Date.now() < replayUntil);
    if (mentionsName(m.body, ME)) attention.mentioned(m);
    markRead();
  }

  /** Tells the server how far the reader has read: the newest id, once the
   * tab is visible and at the bottom for a second. */
  function markRead() {
    if (!readMarkers) return;
    clearTimeout(readTimer);
    readTimer = setTimeout(() => {
      if (document.hidden || !attention.nearBottom() || !lastId || readSent === lastId) return;
      outbox.spend();
      if (connection.send({ type: "read", up_to: lastId })) readSent = lastId;
    }, 1000);
  }

  function onAck(f) {
    const cid = typeof f.client_id === "string" ? f.client_id : "";
    if (!cid || typeof f.id !== "string" || !outbox.find(cid)) return; // already settled by its message
    settle(cid, f.id);
  }

  // Who is online: the first list, then diffs applied to it. In rooms of
  // more than 500, diffs carry only the count.
  const online = new Set();
  let onlineTotal = 0;

  function onPresence(f) {
    if (f.room && f.room !== ROOM) return;
    online.clear();
    for (const n of Array.isArray(f.online) ? f.online : []) if (typeof n === "string") online.add(n);
    onlineTotal = typeof f.count === "number" ? f.count : online.size;
    renderPresence();
  }

  function onPresenceDiff(f) {
    if (f.room && f.room !== ROOM) return;
    for (const n of Array.isArray(f.left) ? f.left : []) online.delete(n);
    for (const n of Array.isArray(f.joined) ? f.joined : []) if (typeof n === "string") online.add(n);
    onlineTotal = typeof f.count === "number" ? f.count : online.size;
    renderPresence();
  }

  function renderPresence() {
    const names = Array.from(online);
    names.sort((a, b) => {
      const x = a.toLowerCase();
      const y = b.toLowerCase();
      return x < y ? -1 : x > y ? 1 : a < b ? -1 : a > b ? 1 : 0;
    });
    const frag = document.createDocumentFragment();
    for (const name of names) {
      const li = document.createElement("li");
      li.textContent = name;
      li.title = name;
      if (name === ME) li.className = "me";
      frag.append(li);
    }
    onlineList.replaceChildren(frag);
    if (onlineCount) onlineCount.textContent = onlineTotal ? String(onlineTotal) : "";
  }

  function onError(f) {
    const code = typeof f.code === "string" ? f.code : "";
    const text = typeof f.message === "string" && f.message ? f.message : (FALLBACK_ERRORS[code] || "Something went wrong.");
    const cid = typeof f.client_id === "string" ? f.client_id : "";
    // Errors about a send are answered in order: one without a client_id
    // is about the message in flight.
    const entry = cid || FALLBACK_ERRORS[code] ? outbox.refused(cid, code, text) : undefined;
    // A refusal for speed is retried quietly; say the rest.
    if (!entry || entry.status === "failed") showNotice(text);
  }

  /* ---------- connection state ---------- */

  function showState(state, detail) {
    const before = currentState;
    currentState = state;
    connEl.textContent = LABELS[state];
    connEl.className = "conn conn-" + state;
    connEl.dataset.state = state;
    const down = state !== "connected";
    onlineList.classList.toggle("stale", down && state !== "connecting");
    if (onlineStale) onlineStale.hidden = !(down && state !== "connecting");

    clearInterval(countdown);
    countdown = 0;
    if (state === "connected" || (state === "connecting" && !wasConnected && !detail.retryAt)) {
      banner.hidden = true;
    } else {
      banner.hidden = false;
      banner.dataset.state = state;
      const paint = () => {
        const lead = state === "offline"
          ? "You are offline."
          : wasConnected ? "Connection lost." : "Cannot reach palaver.";
        const secs = detail.retryAt ? Math.max(0, Math.ceil((detail.retryAt - Date.now()) / 1000)) : 0;
        let next;
        if (state === "offline") next = " Messages you write are kept and sent when the network is back.";
        else if (secs > 0) next = " Reconnecting in " + secs + " s…";
        else next = " Reconnecting…";
        bannerText.textContent = lead + next;
      };
      paint();
      if (detail.retryAt) countdown = setInterval(paint, 1000);
    }

    // Say changes, not every tick: the banner is not a live region.
    if (state !== before) {
      if (state === "connected" && wasConnected) say("Reconnected.");
      else if (state === "reconnecting" && before === "connected") say("Connection lost. Reconnecting.");
      else if (state === "offline") say("You are offline.");
    }
    if (state === "connected") wasConnected = true;
  }

  function say(text) {
    live.textContent = text;
  }

  function showNotice(text) {
    noticeEl.textContent = text;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { noticeEl.textContent = ""; }, NOTICE_MS);
  }

  function showEmpty() {
    emptyState.hidden = !!list.querySelector("li.msg");
    history.show(); // the room's first message: the start line above it
  }

  /* ---------- keeping the page small ---------- */

  // While the reader is scrolled up, let the page grow further rather than
  // pull text out from under them.
  function trim(near) {
    const all = list.querySelectorAll("li.msg[data-id]");
    let extra = all.length - (near ? MAX_DOM : 4 * MAX_DOM);
    if (extra <= 0) return;
    const before = log.scrollHeight;
    for (const li of all) {
      if (extra-- <= 0) break;
      li.remove();
    }
    renderer.layout();
    history.trimmed();
    if (!near) log.scrollTop -= before - log.scrollHeight;
  }

  /* ---------- composing ---------- */

  const drafts = new Drafts(ROOM);

  function newClientId() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function submitMessage() {
    // Trimmed as the server trims, so the line shown is the line stored.
    const body = cleanBody(input.value);
    if (!body) return;
    if (bodyLength(body) > MAX_BODY) {
      showNotice("Messages can be at most " + MAX_BODY + " characters long.");
      return;
    }
    const cid = newClientId();
    const li = renderer.message({ user: ME, body, sentAt: Date.now() });
    li.dataset.clientId = cid;
    lis.set(cid, li);
    renderer.place(li);
    showEmpty();
    outbox.add(cid, body);
    input.value = "";
    drafts.save("");
    input.focus();
    trim(true);
    attention.scrollToBottom(true);
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitMessage();
  });

  input.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter" || ev.shiftKey || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.isComposing || ev.keyCode === 229) return; // IME composition
    ev.preventDefault();
    submitMessage();
  });

  input.addEventListener("input", () => drafts.save(input.value));

  // Only these buttons resend or drop a message: a click elsewhere on it
  // does nothing.
  list.addEventListener("click", (ev) => {
    const button = ev.target instanceof Element ? ev.target.closest("button[data-action]") : null;
    const li = button ? button.closest("li.msg") : null;
    const cid = li ? li.dataset.clientId : "";
    if (!cid) return;
    if (button.dataset.action === "retry") {
      outbox.retryUpTo(cid);
      input.focus();
    } else if (button.dataset.action === "delete") {
      lis.delete(cid);
      li.remove();
      renderer.layout();
      outbox.discard(cid);
      showEmpty();
      input.focus();
    }
  });

  $("retry-all").addEventListener("click", () => {
    outbox.retryAll();
    input.focus();
  });
  $("reconnect-now").addEventListener("click", () => connection.retryNow());

  /* ---------- the page around ---------- */

  setupMenu($("app"), $("nav-toggle"), $("sidebar"));
  const leave = () => connection.leave();
  setupLogoutEverywhere($("logout-everywhere-form"), $("logout-everywhere-dialog"), $("logout-everywhere-cancel"), leave);
  for (const f of document.querySelectorAll("form.leaves")) f.addEventListener("submit", leave);

  /* ---------- start ---------- */

  const history = new History({ root, log, list, renderer, button: $("load-older"), start: $("history-start") });
  const initial = Renderer.history($("history"));
  renderer.bulk(initial);
  for (const m of initial) if (m.id) noteId(m.id);
  showEmpty(); // shows the history controls too
  log.scrollTop = log.scrollHeight;

  $("composer-fields").disabled = false;
  input.value = drafts.load();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);

  Object.defineProperty(window, "palaver", {
    value: Object.freeze({
      state: () => currentState,
      lastId: () => lastId,
      // How many sockets said hello, and how many in-band reauths succeeded.
      hellos: () => connection.hellos,
      reauthentications: () => connection.reauthentications,
      // `rate_limited` answers received, and messages not yet stored.
      refusals: () => outbox.refusals,
      pending: () => outbox.size,
    }),
    writable: false,
    configurable: false,
  });

  connection.start();
}
