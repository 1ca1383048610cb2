// Unit tests of the chat client's rooms (issue 18): the JSON calls, the
// sidebar's three sections kept live, the sidebar's small forms, the
// members panel, the walk to an author's name, 4403 and what the lobby
// says after it. Run in the browser by the
// `the_room_controls_pass_their_unit_tests` journey, against the modules
// the binary serves, with `fetch` and `WebSocket` replaced by fakes (no
// server behind them). Answers a list of failures and the number of checks.
const done = arguments[arguments.length - 1];
(async () => {
  const api = await import("/static/api.js");
  const { standing } = await import("/static/refresh.js");
  const { Sidebar } = await import("/static/sidebar.js");
  const { setupNewDirect, setupNewRoom } = await import("/static/newroom.js");
  const { MembersPanel } = await import("/static/members.js");
  const { PageNotice } = await import("/static/status.js");
  const { Renderer } = await import("/static/render.js");
  const { Connection } = await import("/static/connection.js");
  const failures = [];
  let checks = 0;
  const eq = (what, got, want) => {
    checks += 1;
    const g = JSON.stringify(got);
    const w = JSON.stringify(want);
    if (g !== w) failures.push(what + ": got " + g + ", want " + w);
  };
  const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));

  // fetch, answering from a list of [status, body, headers?]; every request noted
  const asked = [];
  let answers = [];
  const realFetch = window.fetch;
  const RealSocket = window.WebSocket;
  window.fetch = async (url, init) => {
    init = init || {};
    asked.push([init.method || "GET", String(url), init.body === undefined ? null : JSON.parse(init.body)]);
    const next = answers.shift();
    if (!next) throw new TypeError("offline");
    const [status, body, headers] = next;
    return new Response(status === 204 ? null : JSON.stringify(body),
      { status, headers: { "Content-Type": "application/json", ...headers } });
  };
  const answer = (...list) => { answers = list; asked.length = 0; };

  // a visible place for what takes focus, off screen
  const host = document.createElement("div");
  host.style.cssText = "position: fixed; left: -10000px; top: 0; width: 600px;";
  document.body.append(host);
  const q = (id) => host.querySelector("#" + id);
  try {
    // ---------- the JSON calls ----------
    answer([201, { name: "secret", visibility: "private", role: "owner" }]);
    let got = await api.createRoom("secret", "private");
    eq("created", [got.ok, got.status, got.data.role], [true, 201, "owner"]);
    eq("as JSON", asked, [["POST", "/api/rooms", { name: "secret", visibility: "private" }]]);
    answer([409, { error: "name_taken", message: "That name is taken." }]);
    got = await api.createRoom("secret", "private");
    eq("the server's words", [got.ok, got.status, got.message], [false, 409, "That name is taken."]);
    answer([502, "<html>"]);
    eq("words for a status", (await api.startDirect("bob")).message, "Something went wrong (502). Try again.");
    answer([429, { error: "too_many" }]);
    eq("words for a known status", (await api.createRoom("x", "public")).message, "Too many attempts. Try again later.");
    answer();
    got = await api.members("secret");
    eq("offline", [got.ok, got.status, got.message.startsWith("Could not reach palaver")], [false, 0, true]);
    answer([204, null], [204, null]);
    got = await api.addMember("secret", "bo.b");
    await api.removeMember("a b", "bob");
    eq("a 204", [got.ok, got.data], [true, null]);
    eq("paths", asked.map((a) => a[0] + " " + a[1]),
      ["PUT /api/rooms/secret/members/bo.b", "DELETE /api/rooms/a%20b/members/bob"]);

    // after sockets fail before hello: the session, then the room
    const said = async (roomGone) => (await standing(roomGone)).standing;
    answer([401, {}]);
    eq("a session over", await said(async () => true), "expired");
    answer([200, { expires_at: 1 }]);
    eq("a room taken away", await said(async () => true), "revoked");
    answer([200, { expires_at: 1 }]);
    eq("a room still there", await said(async () => false), "unknown");
    answer([200, {}], [404, { error: "not_found" }]);
    eq("a room whose history is a 404", await said(async () => !(await api.roomVisible("/chat/secret/history"))), "revoked");
    eq("asked for one message", asked[1][1], "/chat/secret/history?limit=1");
    // an instance turning upgrades away says how long to wait (whole seconds)
    answer([200, { expires_at: 1 }]);
    eq("not busy", await standing(async () => false), { standing: "unknown", retryAfter: 0 });
    answer([200, { expires_at: 1 }, { "Retry-After": "3" }]);
    eq("busy", await standing(async () => false), { standing: "unknown", retryAfter: 3 });
    answer([200, { expires_at: 1 }, { "Retry-After": "soon" }]);
    eq("a Retry-After that is not seconds", (await standing(async () => false)).retryAfter, 0);
    answer([401, {}, { "Retry-After": "2" }]);
    eq("a session over, however busy", await standing(async () => false), { standing: "expired", retryAfter: 2 });

    // ---------- the sidebar ----------
    host.innerHTML = '<ul id="s-pub"><li><a data-room="lobby" href="/chat/lobby">#lobby</a></li></ul>' +
      '<ul id="s-priv"></ul><p id="s-priv-hint"></p><ul id="s-dm"><li><a data-room="@eve" href="/chat/@eve">@eve</a></li></ul>' +
      '<p id="s-dm-hint"></p><div id="s-live"></div>';
    const side = new Sidebar({ lists: { public: q("s-pub"), private: q("s-priv"), direct: q("s-dm") },
      hints: { private: q("s-priv-hint"), direct: q("s-dm-hint") }, live: q("s-live"), room: "@dave" });
    const links = (id) => Array.from(q(id).querySelectorAll("a"), (a) => a.textContent + " " + a.getAttribute("href"));
    eq("an empty section shows its hint", [q("s-priv-hint").hidden, q("s-dm-hint").hidden], [false, true]);
    side.added("secret", "private");
    side.added("plans", "private");
    side.added("secret", "private");
    eq("added, in order, once", links("s-priv"), ["#plans /chat/plans", "#secret /chat/secret"]);
    eq("the hint goes", q("s-priv-hint").hidden, true);
    await frame();
    eq("said", q("s-live").textContent, "#plans is now in your private rooms.");
    side.removed("plans");
    side.removed("nothing-here");
    eq("removed", links("s-priv"), ["#secret /chat/secret"]);
    await frame();
    eq("said too", q("s-live").textContent, "You are no longer a member of #plans.");
    side.unread({ room: "@carol", unread: 1, mentions: 0 });
    side.unread({ room: "@zed", unread: 0, mentions: 0 });
    side.unread({ room: "hidden-room", unread: 3, mentions: 0 });
    eq("a conversation somebody started", links("s-dm"), ["@carol /chat/@carol", "@eve /chat/@eve"]);
    eq("no public room from an unread count", links("s-pub"), ["#lobby /chat/lobby"]);
    side.showCurrent("direct");
    const current = side.link("@dave");
    eq("the conversation being read, listed and marked",
      [links("s-dm"), current.getAttribute("aria-current")], [["@carol /chat/@carol", "@dave /chat/@dave", "@eve /chat/@eve"], "page"]);
    side.removed("secret");
    eq("empty again: the hint", q("s-priv-hint").hidden, false);

    // ---------- the sidebar's forms ----------
    host.innerHTML = '<button id="f-toggle" hidden>New room…</button><form id="f-form" hidden>' +
      '<input id="f-name" type="text"><label><input type="radio" name="visibility" value="private" checked>p</label>' +
      '<label><input type="radio" id="f-public" name="visibility" value="public">a</label>' +
      '<p id="f-error" role="alert"></p><button id="f-submit" type="submit">Create</button><button type="button" id="f-cancel">Cancel</button></form>' +
      '<button id="d-toggle" hidden></button><form id="d-form" hidden><input id="d-name" type="text"><p id="d-error"></p>' +
      '<button id="d-submit" type="submit">Go</button><button type="button" id="d-cancel">Cancel</button></form>';
    const went = [];
    const go = (href) => went.push(href);
    setupNewRoom({ toggle: q("f-toggle"), form: q("f-form"), input: q("f-name"), error: q("f-error"), cancel: q("f-cancel") }, go);
    eq("the button shows with JavaScript", [q("f-toggle").hidden, q("f-toggle").getAttribute("aria-expanded")], [false, "false"]);
    q("f-toggle").click();
    eq("opened: focus in the field", [q("f-form").hidden, q("f-toggle").getAttribute("aria-expanded"), document.activeElement.id],
      [false, "true", "f-name"]);
    answer();
    q("f-name").value = "no spaces";
    q("f-submit").click();
    eq("checked before sending", [asked.length, q("f-error").textContent.startsWith("Room names are"),
      q("f-name").getAttribute("aria-invalid"), document.activeElement.id], [0, true, "true", "f-name"]);
    q("f-name").value = " Deploy-Notes ";
    q("f-name").dispatchEvent(new Event("input"));
    eq("typing clears the error", [q("f-error").textContent, q("f-name").hasAttribute("aria-invalid")], ["", false]);
    answer([409, { error: "name_taken", message: "That name is taken." }]);
    q("f-submit").click();
    await frame();
    eq("refused: said in the form", [q("f-error").textContent, document.activeElement.id], ["That name is taken.", "f-name"]);
    eq("private unless chosen, lower case", asked[0][2], { name: "deploy-notes", visibility: "private" });
    q("f-public").checked = true;
    answer([201, { name: "deploy-notes", visibility: "public", role: "owner" }]);
    q("f-submit").click();
    await frame();
    eq("created: its page", [asked[0][2].visibility, went], ["public", ["/chat/deploy-notes"]]);
    q("f-name").dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
    eq("Escape closes, focus back", [q("f-form").hidden, document.activeElement.id], [true, "f-toggle"]);

    setupNewDirect({ toggle: q("d-toggle"), form: q("d-form"), input: q("d-name"), error: q("d-error"), cancel: q("d-cancel") }, "Alice", go);
    q("d-toggle").click();
    answer();
    q("d-name").value = "alice";
    q("d-submit").click();
    eq("not oneself", [asked.length, q("d-error").textContent], [0, "That is you: write to someone else."]);
    answer([404, { error: "no_such_user", message: "There is nobody called zed." }]);
    q("d-name").value = "zed";
    q("d-submit").click();
    await frame();
    eq("nobody by that name", q("d-error").textContent, "There is nobody called zed.");
    answer([200, { room: "@Bob" }]);
    q("d-name").value = "@bob";
    q("d-submit").click();
    await frame();
    eq("a conversation: its page", [asked[0][2], went.slice(1)], [{ user: "bob" }, ["/chat/@Bob"]]);
    q("d-cancel").click();
    eq("Cancel closes, focus back", [q("d-form").hidden, document.activeElement.id], [true, "d-toggle"]);

    // ---------- the members panel ----------
    host.innerHTML = '<button id="members-open" hidden>Members</button><dialog id="m-dialog">' +
      '<p id="members-count"></p><ul id="members-list"></ul><p id="members-error"></p><p id="members-status"></p>' +
      '<form id="members-add"><input id="members-add-name" type="text"><button id="m-add" type="submit">Add</button></form>' +
      '<div id="members-confirm" hidden><p id="members-confirm-text"></p><button id="members-confirm-no">Stay</button>' +
      '<button id="members-confirm-yes">Leave</button></div><button id="members-leave">Leave room…</button>' +
      '<button id="members-close">Close</button></dialog>';
    const socket = [];
    const panel = new MembersPanel({ opener: q("members-open"), dialog: q("m-dialog"), room: "secret", me: "alice",
      quiet: () => socket.push("quiet"), resume: () => socket.push("resume"), go });
    const three = { members: [{ user: "carol", role: "member" }, { user: "alice", role: "owner" }, { user: "bob", role: "member" }] };
    const rows = () => Array.from(q("members-list").children, (li) => [li.querySelector(".member-name").textContent,
      li.querySelector(".member-role").textContent, li.querySelector("button") ? li.querySelector("button").getAttribute("aria-label") : null]);
    answer([200, three]);
    q("members-open").click();
    await frame();
    eq("opened: focus on adding", [q("m-dialog").open, document.activeElement.id], [true, "members-add-name"]);
    eq("asked", asked[0].slice(0, 2), ["GET", "/api/rooms/secret/members"]);
    eq("the owner first, then by name; the owner may remove the others", rows(), [
      ["alice (you)", "Owner", null], ["bob", "Member", "Remove bob"], ["carol", "Member", "Remove carol"]]);
    eq("the count", q("members-count").textContent, "3 members");
    eq("a name opens a conversation", q("members-list").querySelector("a").getAttribute("href"), "/chat/@bob");

    answer();
    q("members-add-name").value = "x";
    q("m-add").click();
    eq("a name checked first", [asked.length, q("members-error").textContent.startsWith("Usernames are")], [0, true]);
    answer([404, { error: "no_such_user", message: "There is nobody called zed." }]);
    q("members-add-name").value = "zed";
    q("m-add").click();
    await frame();
    eq("refused", [q("members-error").textContent, q("members-add-name").getAttribute("aria-invalid")],
      ["There is nobody called zed.", "true"]);
    answer([204, null], [200, { members: [...three.members, { user: "dave", role: "member" }] }]);
    q("members-add-name").value = "dave";
    q("m-add").click();
    await frame();
    await frame();
    eq("added", [asked.map((a) => a[0] + " " + a[1]), q("members-add-name").value, q("members-error").textContent,
      q("members-status").textContent, rows().length],
      [["PUT /api/rooms/secret/members/dave", "GET /api/rooms/secret/members"], "", "", "dave can now see #secret.", 4]);

    answer([204, null], [200, { members: three.members.filter((m) => m.user !== "bob") }]);
    q("members-list").querySelector('button[data-user="bob"]').click();
    await frame();
    await frame();
    eq("removed, focus on the next row", [asked[0][0] + " " + asked[0][1], rows().map((r) => r[0]), document.activeElement.dataset.user],
      ["DELETE /api/rooms/secret/members/bob", ["alice (you)", "carol"], "carol"]);

    q("members-leave").click();
    eq("leaving asks first, on the safe answer", [q("members-confirm").hidden, document.activeElement.id,
      q("members-confirm-text").textContent.includes("The longest-standing member becomes its owner.")], [false, "members-confirm-no", true]);
    q("members-confirm-no").click();
    eq("staying", [q("members-confirm").hidden, document.activeElement.id], [true, "members-leave"]);
    answer([500, { error: "unavailable", message: "Try again." }]);
    q("members-leave").click();
    q("members-confirm-yes").click();
    await frame();
    eq("leaving failed: the socket back, the error said", [socket, q("members-error").textContent, went.length], [["quiet", "resume"], "Try again.", 2]);
    answer([204, null]);
    q("members-leave").click();
    q("members-confirm-yes").click();
    await frame();
    eq("left: quietly, to the lobby", [asked[0][0] + " " + asked[0][1], socket.slice(2), went[2]],
      ["DELETE /api/rooms/secret/members/alice", ["quiet"], "/chat/lobby?left=secret"]);
    q("members-close").click();
    await frame();
    eq("closed: focus back on the button", [q("m-dialog").open, document.activeElement.id], [false, "members-open"]);

    answer([200, { members: [{ user: "alice", role: "member" }, { user: "bob", role: "owner" }] }]);
    q("members-open").click();
    await frame();
    eq("a member removes nobody", rows(), [["bob", "Owner", null], ["alice (you)", "Member", null]]);
    answer([200, { members: [{ user: "alice", role: "owner" }] }]);
    await panel.load();
    q("members-leave").click();
    eq("the last member is told", q("members-confirm-text").textContent.includes("the room and its messages will be deleted"), true);
    q("m-dialog").close();

    // ---------- an author's name, from the keyboard ----------
    host.innerHTML = '<ol id="w-list"></ol>';
    const r = new Renderer(q("w-list"), "alice");
    const now = Date.now();
    r.bulk([{ id: "1-0", user: "bob", body: "one", sentAt: now }, { id: "2-0", user: "bob", body: "two", sentAt: now + 1 }]);
    const times = q("w-list").querySelectorAll(".msg-time");
    const key = (k) => document.activeElement.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true, cancelable: true }));
    times[1].focus();
    key("ArrowLeft");
    eq("left: the name heading the run", [document.activeElement.className, document.activeElement.closest("li").dataset.id],
      ["msg-user", "1-0"]);
    key("ArrowRight");
    eq("right: its time", document.activeElement === times[0], true);
    key("ArrowLeft");
    key("ArrowDown");
    eq("down from a name: the next time", document.activeElement === times[1], true);
    eq("still one tab stop", q("w-list").querySelectorAll('[tabindex="0"]').length, 1);

    // ---------- 4403: gone for good; the lobby says why ----------
    const sockets = [];
    window.WebSocket = class {
      constructor(url) { this.url = url; this.handlers = {}; this.readyState = 0; sockets.push(this); }
      addEventListener(type, fn) { this.handlers[type] = fn; }
      close() {}
    };
    window.WebSocket.OPEN = 1;
    const revoked = [];
    const states = [];
    const conn = new Connection({ room: "@bob", after: () => "5-0", onFrame: () => {}, onState: (s) => states.push(s),
      onDown: () => {}, beforeReauth: () => {}, onRevoked: () => revoked.push("revoked") });
    conn.start();
    eq("the socket's address", sockets[0].url.replace(/^ws:\/\/[^/]+/, ""), "/ws?room=%40bob&after=5-0&unread=1");
    sockets[0].handlers.message({ data: JSON.stringify({ type: "hello", user: "alice", room: "@bob", expires_at: 9 }) });
    sockets[0].handlers.close({ code: 4403, reason: "access revoked" });
    eq("4403: revoked, never retried", [revoked, conn.timer, sockets.length, states[states.length - 1]], [["revoked"], 0, 1, "offline"]);
    conn.retryNow();
    conn.resume();
    eq("nothing brings it back", sockets.length, 1);
    conn.leave();

    host.innerHTML = '<div id="n-region" role="status"></div><input id="n-next">';
    new PageNotice(q("n-region"), () => q("n-next").focus()).show("You were removed from #secret.");
    eq("the notice, as text", [q("n-region").querySelector("p").textContent, q("n-region").querySelectorAll("b, script").length],
      ["You were removed from #secret.", 0]);
    q("n-region").querySelector("button").click();
    eq("dismissed", [q("n-region").childElementCount, document.activeElement.id], [0, "n-next"]);
  } finally {
    window.fetch = realFetch;
    window.WebSocket = RealSocket;
    host.remove();
  }
  done({ failures, checks });
})().catch((e) => done({ failures: ["threw: " + (e && e.stack ? e.stack : e)], checks: 0 }));
