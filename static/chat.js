/* palaver chat client.
 * Plain script: no framework, no build step, no dependencies. It runs under
 * the strict Content-Security-Policy of the app (no eval, no inline code) and
 * renders every piece of user data with textContent only.
 */
(function () {
  "use strict";

  const root = document.getElementById("chat");
  if (!root) return;

  const ROOM = root.dataset.room || "lobby";
  const ME = root.dataset.user || "";
  const MAX_BODY = 2000;          // characters, after trimming (docs/protocol.md §3)
  const MAX_DOM = 500;            // messages kept in the page
  const BACKOFF_BASE = 500;       // ms
  const BACKOFF_CAP = 30000;      // ms
  const NOTICE_MS = 5000;
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

  const list = document.getElementById("messages");
  const onlineList = document.getElementById("online");
  const onlineCount = document.getElementById("online-count");
  const connEl = document.getElementById("conn-state");
  const noticeEl = document.getElementById("notice");
  const form = document.getElementById("composer");
  const input = document.getElementById("message-input");

  let lastId = root.dataset.lastId || "";
  let expiresAt = Number(root.dataset.expiresAt) || 0;
  let currentState = "connecting";
  let ws = null;
  let helloSeen = false;        // the current socket has said hello
  let attempt = 0;              // reconnect attempts since the last hello
  let reconnectTimer = 0;
  let flushTimer = 0;
  let noticeTimer = 0;
  let stopped = false;          // 4401 or leaving for /login: never reconnect
  let leaving = false;          // page is being hidden/unloaded
  let refreshing = false;
  let hellos = 0;               // sockets opened (1 unless it reconnected)
  let reauthentications = 0;    // `reauthenticated` frames received
  let lastSessionCheck = 0;
  let unread = 0;
  const baseTitle = document.title;

  // client_id -> { body, li, status: "queued" | "sent" | "unsure" | "failed" }
  // Map keeps insertion order, which is the order messages are (re)sent in.
  const outbox = new Map();
  // client_id -> id, for our messages that are already confirmed.
  const confirmed = new Map();

  /* ---------- message ids ("<ms>-<seq>", compared numerically) ---------- */

  function cmpPart(a, b) {
    if (/^\d+$/.test(a) && /^\d+$/.test(b)) {
      a = a.replace(/^0+(?=\d)/, "");
      b = b.replace(/^0+(?=\d)/, "");
      if (a.length !== b.length) return a.length < b.length ? -1 : 1;
    }
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function compareIds(a, b) {
    const pa = String(a).split("-");
    const pb = String(b).split("-");
    const n = Math.max(pa.length, pb.length);
    for (let i = 0; i < n; i++) {
      const c = cmpPart(pa[i] || "0", pb[i] || "0");
      if (c) return c;
    }
    return 0;
  }

  function noteId(id) {
    if (!lastId || compareIds(id, lastId) > 0) lastId = id;
  }

  /* ---------- connection state ---------- */

  function setState(s) {
    currentState = s;
    connEl.textContent = LABELS[s];
    connEl.className = "conn conn-" + s;
    connEl.dataset.state = s;
  }

  function socketUrl() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    return proto + "://" + location.host + "/ws?room=" + encodeURIComponent(ROOM) +
      "&after=" + encodeURIComponent(lastId || "0-0");
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    if (stopped || leaving) return;
    if (ws && (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN)) return;
    helloSeen = false;
    let sock;
    try {
      sock = new WebSocket(socketUrl());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    let hello = false;
    sock.addEventListener("message", (ev) => {
      if (ws !== sock) return;
      if (typeof ev.data !== "string") return;
      let frame;
      try { frame = JSON.parse(ev.data); } catch (e) { return; }
      if (!frame || typeof frame !== "object") return;
      if (frame.type === "hello") hello = true;
      handleFrame(frame);
    });
    sock.addEventListener("close", (ev) => {
      if (ws !== sock) return;
      onClose(ev, hello);
    });
  }

  function onClose(ev, hadHello) {
    ws = null;
    helloSeen = false;
    clearTimeout(flushTimer);
    flushTimer = 0;
    // Sends that were in flight may or may not have been stored.
    for (const entry of outbox.values()) if (entry.status === "sent") entry.status = "unsure";
    if (ev.code === 4401) {
      goLogin();
      return;
    }
    if (stopped || leaving) return;
    // A socket that never said hello may have been refused (401 on the
    // upgrade looks like 1006 to a browser): ask the server about the session.
    if (!hadHello && navigator.onLine !== false) checkSession();
    setState(navigator.onLine === false ? "offline" : "reconnecting");
    scheduleReconnect();
  }

  function scheduleReconnect(capMs) {
    if (stopped || leaving || reconnectTimer) return;
    let ceiling = Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt);
    if (capMs !== undefined) ceiling = Math.min(ceiling, capMs);
    const delay = Math.random() * ceiling; // full jitter
    attempt = Math.min(attempt + 1, 20);
    reconnectTimer = setTimeout(() => {
      reconnectTimer = 0;
      // While the browser reports no network, wait for its "online" event
      // (with a slow retry in case that report is wrong).
      if (navigator.onLine === false) scheduleReconnect();
      else connect();
    }, delay);
  }

  function goLogin() {
    stopped = true;
    clearTimeout(reconnectTimer);
    clearTimeout(flushTimer);
    if (ws) {
      const s = ws;
      ws = null;
      try { s.close(1000); } catch (e) { /* already closing */ }
    }
    setState("offline");
    location.assign("/login");
  }

  function checkSession() {
    const now = Date.now();
    if (now - lastSessionCheck < 10000) return;
    lastSessionCheck = now;
    postRefresh().then((res) => {
      if (res && res.status === 401) goLogin();
    });
  }

  function postRefresh() {
    return fetch("/session/refresh", {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    }).catch(() => null);
  }

  function sendFrame(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  /* ---------- frames ---------- */

  function handleFrame(f) {
    switch (f.type) {
      case "hello": onHello(f); break;
      case "message": onMessage(f); break;
      case "ack": onAck(f); break;
      case "presence": onPresence(f); break;
      case "presence_diff": onPresenceDiff(f); break;
      case "reauthenticate": onReauthenticate(f); break;
      case "reauthenticated":
        reauthentications += 1;
        if (Number.isFinite(Number(f.expires_at))) expiresAt = Number(f.expires_at);
        break;
      case "error": onError(f); break;
      default: break;
    }
  }

  function onHello(f) {
    helloSeen = true;
    hellos += 1;
    attempt = 0;
    if (Number.isFinite(Number(f.expires_at))) expiresAt = Number(f.expires_at);
    setState("connected");
    // A send that was in flight when the last socket died may already be
    // stored; give the replay of missed messages a moment to confirm it
    // before sending it again.
    let unsure = false;
    for (const entry of outbox.values()) if (entry.status === "unsure") unsure = true;
    clearTimeout(flushTimer);
    flushTimer = 0;
    if (unsure) flushTimer = setTimeout(flush, 400);
    else flush();
  }

  function canSend() {
    return !!ws && ws.readyState === WebSocket.OPEN && helloSeen && !flushTimer;
  }

  function flush() {
    flushTimer = 0;
    for (const [cid, entry] of outbox) {
      if (entry.status === "queued" || entry.status === "unsure") transmit(cid, entry);
    }
  }

  function transmit(cid, entry) {
    if (sendFrame({ type: "send", body: entry.body, client_id: cid })) entry.status = "sent";
  }

  function onMessage(f) {
    if (typeof f.id !== "string" || !f.id) return;
    if (f.room && f.room !== ROOM) return;
    noteId(f.id);
    const cid = typeof f.client_id === "string" ? f.client_id : "";
    const entry = cid ? outbox.get(cid) : undefined;
    const existing = findById(f.id);
    if (existing) {
      if (entry && entry.li !== existing) entry.li.remove();
      if (entry) forget(cid, f.id);
      return;
    }
    if (entry) {
      // Our own pending message: confirm it in place of a second copy.
      forget(cid, f.id);
      confirm(entry.li, f.id, f.sent_at);
      place(entry.li);
      return;
    }
    // The same message of ours stored twice (resent after a lost ack).
    if (cid && confirmed.has(cid) && confirmed.get(cid) !== f.id) return;
    const near = nearBottom();
    const li = renderMessage(String(f.user || ""), String(f.body || ""), Number(f.sent_at) || Date.now());
    li.dataset.id = f.id;
    place(li);
    trim(near);
    if (near) scrollToBottom(true);
    if (document.hidden) {
      unread += 1;
      document.title = "(" + unread + ") " + baseTitle;
    }
  }

  function onAck(f) {
    const cid = typeof f.client_id === "string" ? f.client_id : "";
    const entry = outbox.get(cid);
    if (!entry || typeof f.id !== "string") return; // already merged by its message frame
    forget(cid, f.id);
    const other = findById(f.id);
    if (other && other !== entry.li) {
      entry.li.remove();
      return;
    }
    confirm(entry.li, f.id);
    place(entry.li);
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
      if (name === ME) li.className = "me";
      frag.append(li);
    }
    onlineList.replaceChildren(frag);
    if (onlineCount) onlineCount.textContent = onlineTotal ? String(onlineTotal) : "";
  }

  function onError(f) {
    const code = typeof f.code === "string" ? f.code : "";
    const text = typeof f.message === "string" && f.message ? f.message : (FALLBACK_ERRORS[code] || "Something went wrong.");
    showNotice(text);
    let cid = typeof f.client_id === "string" ? f.client_id : "";
    if (!cid && FALLBACK_ERRORS[code]) {
      // No client_id: sends are answered in order, so the error is about
      // the oldest send still waiting for its ack.
      for (const [k, entry] of outbox) {
        if (entry.status === "sent") { cid = k; break; }
      }
    }
    const entry = cid ? outbox.get(cid) : undefined;
    if (entry) markFailed(entry);
  }

  function onReauthenticate(f) {
    const t = Number(f.expires_at);
    if (Number.isFinite(t) && t > 0) expiresAt = t;
    refreshSession();
  }

  async function refreshSession() {
    if (refreshing || stopped) return;
    refreshing = true;
    // The server closes the socket at expiresAt; if our clock disagrees with
    // the server's, still allow a few quick retries.
    const deadline = Math.max(expiresAt || 0, Date.now() + 20000);
    try {
      for (let i = 0; i < 6 && !stopped; i++) {
        const res = await postRefresh();
        if (res && res.status === 401) {
          goLogin();
          return;
        }
        if (res && res.ok) {
          const body = await res.json().catch(() => null);
          if (body && Number.isFinite(Number(body.expires_at))) expiresAt = Number(body.expires_at);
          sendFrame({ type: "reauth" });
          return;
        }
        const wait = Math.min(4000, 250 * 2 ** i) * (0.5 + Math.random() / 2);
        if (Date.now() + wait >= deadline - 1000) return;
        await new Promise((r) => setTimeout(r, wait));
      }
    } finally {
      refreshing = false;
    }
  }

  /* ---------- rendering ---------- */

  function hue(name) {
    let h = 0;
    for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    return h % 8;
  }

  function paintAvatar(el, name) {
    el.textContent = Array.from(name)[0] || "?";
    el.classList.add("hue-" + hue(name.toLowerCase()));
  }

  function fmtTime(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function setTime(el, ms) {
    const d = new Date(ms);
    if (Number.isNaN(d.getTime())) return;
    el.textContent = fmtTime(ms);
    el.dateTime = d.toISOString();
    el.title = d.toLocaleString();
  }

  function renderMessage(user, body, sentAt) {
    const li = document.createElement("li");
    li.className = user === ME ? "msg mine" : "msg";
    li.dataset.user = user;
    li.dataset.sentAt = String(sentAt);
    const avatar = document.createElement("span");
    avatar.className = "msg-avatar";
    avatar.setAttribute("aria-hidden", "true");
    paintAvatar(avatar, user);
    const main = document.createElement("div");
    main.className = "msg-main";
    const meta = document.createElement("div");
    meta.className = "msg-meta";
    const who = document.createElement("span");
    who.className = "msg-user";
    who.textContent = user;
    const time = document.createElement("time");
    time.className = "msg-time";
    setTime(time, sentAt);
    meta.append(who, " ", time);
    const p = document.createElement("p");
    p.className = "msg-body";
    p.textContent = body;
    main.append(meta, p);
    li.append(avatar, main);
    return li;
  }

  function findById(id) {
    for (const li of list.querySelectorAll("li.msg[data-id]")) {
      if (li.dataset.id === id) return li;
    }
    return null;
  }

  // Confirmed messages are kept in id order; pending and failed ones stay
  // at the bottom, in the order they were written.
  function place(li) {
    const id = li.dataset.id;
    if (li.parentNode) li.remove();
    let node = list.lastElementChild;
    while (node && (!node.dataset.id || compareIds(node.dataset.id, id) > 0)) {
      node = node.previousElementSibling;
    }
    if (node) node.after(li);
    else list.prepend(li);
  }

  function confirm(li, id, sentAt) {
    li.dataset.id = id;
    li.classList.remove("pending", "failed");
    li.removeAttribute("title");
    const status = li.querySelector(".msg-status");
    if (status) status.remove();
    const t = Number(sentAt);
    if (Number.isFinite(t) && t > 0) {
      li.dataset.sentAt = String(t);
      const time = li.querySelector(".msg-time");
      if (time) setTime(time, t);
    }
  }

  function forget(cid, id) {
    outbox.delete(cid);
    confirmed.set(cid, id);
    if (confirmed.size > 1000) confirmed.delete(confirmed.keys().next().value);
  }

  function markFailed(entry) {
    entry.status = "failed";
    const li = entry.li;
    li.classList.remove("pending");
    li.classList.add("failed");
    li.title = "Not confirmed. Click to try again (it will not be sent twice).";
    if (li.querySelector(".msg-status")) return;
    const status = document.createElement("div");
    status.className = "msg-status";
    const label = document.createElement("span");
    label.textContent = "Not confirmed.";
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "msg-retry";
    retry.textContent = "Retry";
    status.append(label, retry);
    li.querySelector(".msg-main").append(status);
  }

  function resend(li) {
    const cid = li.dataset.clientId;
    const entry = cid ? outbox.get(cid) : undefined;
    if (!entry || entry.status !== "failed") return;
    entry.status = "queued";
    li.classList.remove("failed");
    li.classList.add("pending");
    li.removeAttribute("title");
    const status = li.querySelector(".msg-status");
    if (status) status.remove();
    if (canSend()) transmit(cid, entry);
    input.focus();
  }

  // Keep the page small. While the reader is scrolled up, let it grow
  // further rather than pull text out from under them.
  function trim(near) {
    let extra = list.children.length - (near ? MAX_DOM : 4 * MAX_DOM);
    if (extra <= 0) return;
    const before = list.scrollHeight;
    let node = list.firstElementChild;
    while (node && extra > 0) {
      const next = node.nextElementSibling;
      if (node.dataset.id) {
        node.remove();
        extra -= 1;
      }
      node = next;
    }
    // Keep what the reader is looking at in place.
    if (!near) list.scrollTop -= before - list.scrollHeight;
  }

  // pinned: the reader is at the bottom and wants to follow new messages.
  // Scroll events caused by our own smooth scrolling do not change it.
  let pinned = true;
  let autoScrollUntil = 0;
  let scrollQueued = false;

  function nearBottom() {
    return pinned || list.scrollHeight - list.scrollTop - list.clientHeight < 120;
  }

  list.addEventListener("scroll", () => {
    if (Date.now() < autoScrollUntil) return;
    pinned = list.scrollHeight - list.scrollTop - list.clientHeight < 120;
  }, { passive: true });
  for (const type of ["wheel", "touchstart", "keydown"]) {
    list.addEventListener(type, () => { autoScrollUntil = 0; }, { passive: true });
  }

  function scrollToBottom(smooth) {
    pinned = true;
    autoScrollUntil = Date.now() + (smooth ? 800 : 100);
    if (scrollQueued) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      // A long way to go (a burst of missed messages): jump, don't glide.
      const far = list.scrollHeight - list.scrollTop - list.clientHeight > 2 * list.clientHeight;
      list.scrollTo({ top: list.scrollHeight, behavior: smooth && !far ? "smooth" : "auto" });
    });
  }

  function showNotice(text) {
    noticeEl.textContent = text;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { noticeEl.textContent = ""; }, NOTICE_MS);
  }

  function newClientId() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /* ---------- composing ---------- */

  function submitMessage() {
    const body = input.value.trim();
    if (!body) return;
    if (Array.from(body).length > MAX_BODY) {
      showNotice("Messages can be at most " + MAX_BODY + " characters long.");
      return;
    }
    const cid = newClientId();
    const li = renderMessage(ME, body, Date.now());
    li.classList.add("pending");
    li.dataset.clientId = cid;
    const entry = { body: body, li: li, status: "queued" };
    outbox.set(cid, entry);
    list.append(li);
    input.value = "";
    input.focus();
    if (canSend()) transmit(cid, entry);
    trim(true);
    scrollToBottom(true);
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

  list.addEventListener("click", (ev) => {
    const li = ev.target instanceof Element ? ev.target.closest("li.msg.failed") : null;
    if (li) resend(li);
  });

  /* ---------- page lifecycle and network ---------- */

  window.addEventListener("offline", () => {
    if (!stopped) setState("offline");
  });

  window.addEventListener("online", () => {
    if (stopped || leaving) return;
    if (ws && ws.readyState === WebSocket.OPEN && helloSeen) {
      setState("connected");
      return;
    }
    setState("reconnecting");
    if (ws) return; // a connection attempt is already under way
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    attempt = 0;
    scheduleReconnect(1000);
  });

  window.addEventListener("pagehide", () => {
    leaving = true;
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    if (ws) {
      const s = ws;
      ws = null;
      helloSeen = false;
      for (const entry of outbox.values()) if (entry.status === "sent") entry.status = "unsure";
      try { s.close(1000, "page hidden"); } catch (e) { /* ignore */ }
    }
  });

  window.addEventListener("pageshow", (ev) => {
    if (!ev.persisted || stopped) return;
    leaving = false;
    attempt = 0;
    setState("reconnecting");
    connect();
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && unread) {
      unread = 0;
      document.title = baseTitle;
    }
  });

  /* ---------- start ---------- */

  for (const li of list.querySelectorAll("li.msg")) {
    const user = li.dataset.user || "";
    const avatar = li.querySelector(".msg-avatar");
    if (avatar && !avatar.textContent) paintAvatar(avatar, user);
    const t = Number(li.dataset.sentAt);
    const time = li.querySelector(".msg-time");
    if (time && Number.isFinite(t) && t > 0) setTime(time, t);
    if (li.dataset.id) noteId(li.dataset.id);
  }
  list.scrollTop = list.scrollHeight;

  Object.defineProperty(window, "palaver", {
    value: Object.freeze({
      state: () => currentState,
      lastId: () => lastId,
      // How many sockets said hello, and how many in-band reauths succeeded.
      hellos: () => hellos,
      reauthentications: () => reauthentications,
    }),
    writable: false,
    configurable: false,
  });

  setState(navigator.onLine === false ? "offline" : "connecting");
  connect();
})();
