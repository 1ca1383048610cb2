/* palaver chat client: the entry module of the chat page.
 * Plain JavaScript modules, no framework, no build step, no dependencies.
 * They run under the app's strict Content-Security-Policy (no inline
 * code, no eval) and put user data in the page as text only.
 *
 *   connection.js  the socket's life: backoff, reconnecting, reauth, 4401, 4403
 *   refresh.js     staying signed in over HTTP; why sockets keep failing
 *   frames.js      the server's frames, decoded and checked once
 *   session.js     the frames in: each to its place; the newest id seen
 *   timeline.js    the messages on the page: stored, ours pending, trimmed
 *   render.js      the one place a message becomes markup; days, groups
 *   walk.js        one tab stop for the list; arrows walk message times
 *   history.js     older messages, a page at a time, back to the room's start
 *   composer.js    writing: the message box, drafts, retry and delete
 *   outbox.js      our messages: strict order, pacing, retries
 *   presence.js    who is online
 *   reading.js     the read marker
 *   attention.js   following along, announcements, mentions, unread
 *   status.js      the connection's state, the banner, notices
 *   sidebar.js     the reader's rooms, in three sections, kept live
 *   sideform.js    a small form behind a sidebar button
 *   newroom.js     a new room, a new conversation, from the sidebar
 *   members.js     a private room's members: list, add, remove, leave
 *   ui.js          phone menu, logout-everywhere dialog
 *   api.js         the JSON routes: rooms, members, direct conversations
 *   labels.js      rooms as the page names them: #deploys, @bob
 *   text.js        message text: as stored, as tokens, mentions
 *   format.js      pure helpers: ids, dates, pacing, schedule, sign-in URL
 *   welcome.js     the sign-in page's greeting, and the mark this page leaves
 *
 * This file finds the page's parts and wires the modules to them and to
 * each other; it holds no state of its own.
 */

import { Connection } from "./connection.js";
import { ChatSession } from "./session.js";
import { Timeline } from "./timeline.js";
import { Composer } from "./composer.js";
import { Outbox } from "./outbox.js";
import { Presence } from "./presence.js";
import { ReadMarker } from "./reading.js";
import { Attention } from "./attention.js";
import { ConnectionStatus, Notice, PageNotice } from "./status.js";
import { Sidebar } from "./sidebar.js";
import { setupNewDirect, setupNewRoom, setupOpenRoom } from "./newroom.js";
import { MembersPanel } from "./members.js";
import { setupLogoutEverywhere, setupMenu } from "./ui.js";
import { roomVisible } from "./api.js";
import { arrivalNotice, lobbyAfter } from "./labels.js";
import { markSignedIn } from "./welcome.js";

document.documentElement.classList.remove("no-js");

const root = document.getElementById("chat");
if (root) start(root);

function start(root) {
  markSignedIn();
  const room = root.dataset.room || "lobby";
  const kind = root.dataset.kind || "public";
  const me = root.dataset.user || "";
  const $ = (id) => document.getElementById(id);
  const go = (href) => location.assign(href);
  const log = $("log");
  const list = $("messages");

  // Some modules call others declared further down (the outbox sends
  // through the connection, which reports to the outbox): no callback runs
  // before this function has returned.
  const timeline = new Timeline({
    root,
    log,
    list,
    me,
    olderButton: $("load-older"),
    startLine: $("history-start"),
    emptyState: $("empty-state"),
  });
  const notice = new Notice($("notice"));
  const sidebar = new Sidebar({
    lists: { public: $("rooms"), private: $("private-rooms"), direct: $("direct-rooms") },
    hints: { private: $("private-empty"), direct: $("direct-empty") },
    live: $("rooms-live"),
    room,
  });
  const attention = new Attention({
    log,
    list,
    room,
    me,
    jump: $("jump-new"),
    announcer: $("announcer"),
    notifyButton: $("notify-toggle"),
    rooms: $("sidebar"),
    onBottom: () => reading.update(),
  });
  const outbox = new Outbox({
    send: (frame) => connection.send(frame),
    onChange: (entry) => timeline.setStatus(entry.cid, entry.shown, entry.reason),
    onDone: () => {},
    onSummary: () => composer.summarize(),
  });
  const reading = new ReadMarker({
    atBottom: () => attention.nearBottom(),
    newestId: () => session.lastId,
    send: (frame) => connection.send(frame),
    spend: () => outbox.spend(),
  });
  const presence = new Presence({ list: $("online"), count: $("online-count"), stale: $("online-stale"), me });
  const session = new ChatSession({
    room,
    me,
    lastId: root.dataset.lastId,
    timeline,
    outbox,
    attention,
    presence,
    reading,
    notice,
    sidebar,
  });
  const status = new ConnectionStatus({
    pill: $("conn-state"),
    banner: $("conn-banner"),
    bannerText: $("conn-banner-text"),
    live: $("conn-live"),
    retryButton: $("reconnect-now"),
    onRetry: () => connection.retryNow(),
  });
  const connection = new Connection({
    room,
    after: () => session.lastId,
    onFrame: (frame) => session.receive(frame),
    onState: (state, detail) => {
      status.show(state, detail);
      presence.markStale(state !== "connected" && state !== "connecting");
    },
    onDown: () => outbox.disconnected(),
    beforeReauth: () => outbox.spend(),
    onRevoked: () => go(lobbyAfter("removed", room)),
    // Only a private room can be taken away (a public one that expired
    // is opened again; a direct one never changes).
    roomGone: kind === "private" ? async () => !(await roomVisible(root.dataset.historyUrl)) : undefined,
  });
  const composer = new Composer({
    form: $("composer"),
    fields: $("composer-fields"),
    input: $("message-input"),
    list,
    bar: $("outbox-bar"),
    barText: $("outbox-text"),
    retryAll: $("retry-all"),
    room,
    timeline,
    outbox,
    notice,
    followed: () => attention.scrollToBottom(true),
    count: $("composer-count"),
    tooLong: $("too-long"),
    tooLongText: $("too-long-text"),
    split: $("too-long-split"),
    keepEditing: $("too-long-edit"),
  });

  setupMenu($("app"), $("nav-toggle"), $("sidebar"));
  const leave = () => connection.leave();
  setupLogoutEverywhere($("logout-everywhere-form"), $("logout-everywhere-dialog"), $("logout-everywhere-cancel"), leave);
  for (const f of document.querySelectorAll("form.leaves")) f.addEventListener("submit", leave);
  const sideForm = (name) => ({
    toggle: $(name + "-toggle"),
    form: $(name),
    input: $(name + "-name"),
    error: $(name + "-error"),
    cancel: $(name + "-cancel"),
  });
  setupOpenRoom($("open-room-name"));
  setupNewRoom(sideForm("new-room"), go);
  setupNewDirect(sideForm("new-direct"), me, go);
  sidebar.showCurrent(kind);
  if (kind === "private" && $("members-dialog")) {
    new MembersPanel({
      opener: $("members-open"),
      dialog: $("members-dialog"),
      room,
      me,
      quiet: leave,
      resume: () => connection.resume(),
      go,
    });
  }
  const arrived = arrivalNotice(location.search);
  if (arrived) {
    new PageNotice($("page-notice"), () => $("message-input").focus()).show(arrived);
    // Said once: a reload or a bookmark does not say it again.
    window.history.replaceState(null, "", location.pathname);
  }

  for (const id of timeline.showRendered($("history"))) session.noteId(id);
  timeline.showSince(root.dataset.since);
  composer.open();
  connection.start();
}
