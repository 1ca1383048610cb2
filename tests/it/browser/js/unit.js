// Unit tests of the chat client's pure modules, run in the browser by the
// `the_client_logic_passes_its_unit_tests` journey (WebDriver's asynchronous
// execute: the last argument is the callback). The modules are imported
// from the app itself, so they are the files the binary serves. Answers a
// list of failures (empty when all pass) and the number of checks.
const done = arguments[arguments.length - 1];
(async () => {
  const f = await import("/static/format.js");
  const text = await import("/static/text.js");
  const { decodeFrame } = await import("/static/frames.js");
  const labels = await import("/static/labels.js");
  const { Outbox } = await import("/static/outbox.js");
  const failures = [];
  let checks = 0;
  const eq = (what, got, want) => {
    checks += 1;
    const g = JSON.stringify(got);
    const w = JSON.stringify(want);
    if (g !== w) failures.push(what + ": got " + g + ", want " + w);
  };

  // ids compare as numbers
  eq("ids", [f.compareIds("9-0", "10-0"), f.compareIds("10-1", "10-0"), f.compareIds("5-5", "5-5")], [-1, 1, 0]);

  // message text
  const kinds = (body) => text.tokenize(body).map((t) => t.t + ":" + t.v);
  eq("a link ends before the full stop", kinds("see https://example.com/a."),
    ["text:see ", "link:https://example.com/a", "text:."]);
  eq("a link in brackets", kinds("(https://example.com/x_(y))"),
    ["text:(", "link:https://example.com/x_(y)", "text:)"]);
  eq("only http and https", kinds("javascript:alert(1) ftp://x.example"), ["text:javascript:alert(1) ftp://x.example"]);
  eq("code spans and blocks", kinds("run `cargo test`:\n```sh\n  indented\n```\nok"),
    ["text:run ", "code:cargo test", "text::", "block:  indented", "text:ok"]);
  eq("a fence on one line", kinds("```a b```"), ["block:a b"]);
  eq("no link inside code", kinds("`https://example.com`"), ["code:https://example.com"]);
  eq("mentions", kinds("hi @bob. and me@mail.example @al"), ["text:hi ", "mention:@bob", "text:. and me@mail.example @al"]);
  eq("mentionsName ignores case", [text.mentionsName("@Alice look", "alice"), text.mentionsName("alice", "alice")], [true, false]);
  // The server counts mentions by the same rule (src/model.rs `mentions`,
  // whose unit tests hold these cases too).
  const named = (body) => [...new Set(text.tokenize(body).filter((t) => t.t === "mention").map((t) => t.name.toLowerCase()))];
  for (const [body, want] of [
    ["hi @bob. and me@mail.example @al", ["bob"]],
    ["@alice and @ALICE, (@carol)", ["alice", "carol"]],
    ["@bob@carol @bob.x @dave-", ["bob", "bob.x", "dave-"]],
    ["x@bob _@bob .@bob -@bob", []],
    ["\u00e9@bob \u00bb@carol", ["bob", "carol"]],
    ["@" + "a".repeat(40), ["a".repeat(32)]],
    ["`@bob` @carol", ["carol"]],
    ["```\n@bob\n``` @carol", ["carol"]],
    ["```@bob```@carol", ["carol"]],
    ["``` unclosed @bob", ["bob"]],
    ["`\n@bob\n` @carol", ["bob", "carol"]],
    ["`` @bob ` @carol", ["carol"]],
    ["see https://example.com/@bob or HTTP://x.example/@al, @carol", ["carol"]],
    ["xhttps://example.com/@bob", ["bob"]],
    ["https://example.com/\"@bob", ["bob"]],
  ]) eq("mentions in " + JSON.stringify(body), named(body), want);
  eq("the href is normalised", text.tokenize("https://EXAMPLE.com")[0].href, "https://example.com/");
  // a body too long for one message, as several
  const lines = Array.from({ length: 6 }, (_, i) => "line " + i + " " + "x".repeat(4));
  eq("split at line ends", text.splitBody(lines.join("\n"), 25), [lines.slice(0, 2).join("\n"), lines.slice(2, 4).join("\n"), lines.slice(4).join("\n")]);
  eq("then at spaces", text.splitBody("aaaa bbbb cccc", 9), ["aaaa bbbb", "cccc"]);
  eq("else at the limit", text.splitBody("abcdefghij", 4), ["abcd", "efgh", "ij"]);
  eq("characters, not UTF-16 units", text.splitBody("\u{1F600}".repeat(5), 2).map((p) => Array.from(p).length), [2, 2, 1]);
  eq("one that fits is one", text.splitBody("  short  ", 25), ["  short"]);
  eq("trimmed as the server trims", text.cleanBody("  \n  code\n    more  \n"), "  code\n    more");
  eq("blank lines and trailing space go", text.cleanBody(" \r\n\t\n    fn main() {}\r\n\n"), "    fn main() {}");
  eq("nothing but space is nothing", text.cleanBody(" \n\t "), "");

  // days and groups, in the page's time zone
  const now = new Date(2026, 10, 25, 9, 30).getTime();
  const at = (d, h, m) => new Date(2026, 10, d, h, m).getTime();
  eq("today", f.dayLabel(at(25, 0, 1), now), "Today");
  eq("yesterday", f.dayLabel(at(24, 23, 59), now), "Yesterday");
  // (ICU versions differ on the comma after the weekday.)
  const plain = (s) => s.replace(",", "");
  eq("a date", plain(f.dayLabel(at(22, 12, 0), now, "en-GB")), "Sunday 22 November");
  eq("another year", plain(f.dayLabel(new Date(2025, 0, 2).getTime(), now, "en-GB")), "Thursday 2 January 2025");
  eq("groups", [
    f.continues("bob", at(25, 9, 0), "bob", at(25, 9, 4)),
    f.continues("bob", at(25, 9, 0), "bob", at(25, 9, 6)),
    f.continues("bob", at(25, 9, 0), "ann", at(25, 9, 1)),
    f.continues("bob", at(24, 23, 59), "bob", at(25, 0, 1)),
  ], [true, false, false, false]);

  // the pacer: 90 % of the rate, one token short of the burst
  const p = new f.Pacer(10, 20, 0);
  let sent = 0;
  while (p.wait(0) === 0) { p.take(0); sent += 1; }
  eq("burst", sent, 19);
  eq("then one per 1/(0.9 × rate)", p.wait(0), 112);
  eq("refilled", p.wait(112), 0);

  // the reconnect schedule
  const visible = [0, 1, 5, 30].map((n) => f.reconnectDelay(n, n * 1500, true, 1));
  eq("visible: quick, then 1 to 1.5 s", visible, [500, 1500, 1500, 1500]);
  eq("visible: at least 1 s", f.reconnectDelay(3, 5000, true, 0), 1000);
  eq("after a minute: backing off", [f.reconnectDelay(40, 61000, true, 1), f.reconnectDelay(50, 120000, true, 1)], [4000, 30000]);
  eq("hidden: full jitter to 30 s", [f.reconnectDelay(0, 0, false, 1), f.reconnectDelay(10, 0, false, 1)], [500, 30000]);
  eq("busy: the Retry-After, plus up to a second", [f.busyDelay(3, 0), f.busyDelay(3, 0.5), f.busyDelay(1, 1)], [3000, 3500, 2000]);
  const drawn = Array.from({ length: 200 }, () => f.busyDelay(5));
  eq("busy: never sooner than asked, at most a second later", drawn.every((d) => d >= 5000 && d <= 6000), true);

  // the sign-in page's reasons and way back
  eq("reasons", ["logged out", "session expired", "token expired", "session revoked", "x"].map(f.closeReason),
    ["logged_out", "expired", "expired", "revoked", ""]);
  eq("login url", [f.loginUrl("expired", "/chat/a-b"), f.loginUrl("", "//evil.example")],
    ["/login?reason=expired&next=%2Fchat%2Fa-b", "/login"]);

  // rooms as the page names them: #deploys, @bob
  eq("titles", ["deploys", "@bob"].map(labels.roomTitle), ["#deploys", "@bob"]);
  eq("pages", ["deploys", "@bob", "@Bob.x"].map(labels.roomHref), ["/chat/deploys", "/chat/@bob", "/chat/@Bob.x"]);
  eq("a conversation's page", labels.directHref("carol"), "/chat/@carol");
  eq("valid labels", ["deploys", "a", "@bob", "@Bo_b.x-1", "Deploys", "@bo", "@", "", "dev ops", "@bob/x", "#dev"].map(labels.validLabel),
    [true, true, true, true, false, false, false, false, false, false, false]);
  eq("room names", ["x", "a-1", "a".repeat(32), "a".repeat(33), "A", "a_b"].map(labels.validRoomName),
    [true, true, true, false, false, false]);
  eq("the lobby after a room", [labels.lobbyAfter("removed", "secret"), labels.lobbyAfter("left", "@bob")],
    ["/chat/lobby?removed=secret", "/chat/lobby?left=%40bob"]);
  eq("why the lobby", [
    labels.arrivalNotice("?removed=secret"),
    labels.arrivalNotice("?left=secret"),
    labels.arrivalNotice("?removed=%40bob"),
    labels.arrivalNotice("?removed=%3Cb%3Ex%3C%2Fb%3E"),
    labels.arrivalNotice("?removed=Secret"),
    labels.arrivalNotice("?removed="),
    labels.arrivalNotice("?gone=secret"),
    labels.arrivalNotice(""),
    labels.arrivalNotice(undefined),
  ], ["You were removed from #secret.", "You left #secret.", "You were removed from @bob.", null, null, null, null, null, null]);

  // the frame decoder: the server's frames (the golden JSON of src/protocol.rs
  // among them) become typed objects; anything else is null
  const decoded = (json) => decodeFrame(typeof json === "string" ? json : JSON.stringify(json));
  eq("hello", decoded('{"type":"hello","user":"alice","room":"lobby","expires_at":5,"rate":{"per_sec":2.5,"burst":20},"read_markers":true}'),
    { type: "hello", user: "alice", room: "lobby", expiresAt: 5, rate: { perSec: 2.5, burst: 20 }, readMarkers: true });
  eq("a hello that announces neither rate nor read markers",
    decoded({ type: "hello", user: "alice", room: "lobby", expires_at: 5 }),
    { type: "hello", user: "alice", room: "lobby", expiresAt: 5, rate: null, readMarkers: false });
  eq("message", decoded('{"type":"message","room":"lobby","id":"7-1","user":"bob","body":"<b>","sent_at":9}'),
    { type: "message", room: "lobby", id: "7-1", user: "bob", body: "<b>", sentAt: 9, clientId: "" });
  eq("message with its client_id",
    decoded({ type: "message", room: "lobby", id: "7-1", user: "bob", body: "hi", sent_at: 9, client_id: "c1" }).clientId, "c1");
  eq("ack", decoded({ type: "ack", client_id: "c1", id: "7-1" }), { type: "ack", id: "7-1", clientId: "c1" });
  eq("presence", decoded({ type: "presence", room: "lobby", online: ["alice", "bob"], count: 2 }),
    { type: "presence", room: "lobby", online: ["alice", "bob"], count: 2 });
  eq("presence_diff", decoded({ type: "presence_diff", room: "lobby", joined: ["carol"], left: [], count: 700 }),
    { type: "presence_diff", room: "lobby", joined: ["carol"], left: [], count: 700 });
  eq("unread", decoded('{"type":"unread","room":"dev","unread":3,"mentions":1}'),
    { type: "unread", room: "dev", unread: 3, mentions: 1 });
  eq("reauthenticate and reauthenticated",
    [decoded({ type: "reauthenticate", expires_at: 7 }), decoded({ type: "reauthenticated", expires_at: 8 })],
    [{ type: "reauthenticate", expiresAt: 7 }, { type: "reauthenticated", expiresAt: 8 }]);
  eq("error", decoded('{"type":"error","code":"rate_limited","message":"slow down"}'),
    { type: "error", code: "rate_limited", message: "slow down", clientId: "" });
  eq("room_added", decoded('{"type":"room_added","room":"secret","visibility":"private"}'),
    { type: "room_added", room: "secret", visibility: "private" });
  eq("room_added for a conversation", decoded({ type: "room_added", room: "@bob", visibility: "direct" }),
    { type: "room_added", room: "@bob", visibility: "direct" });
  eq("room_removed", decoded('{"type":"room_removed","room":"secret"}'), { type: "room_removed", room: "secret" });
  eq("unread of a conversation", decoded({ type: "unread", room: "@bob", unread: 2, mentions: 0 }),
    { type: "unread", room: "@bob", unread: 2, mentions: 0 });
  eq("an absent optional field may be null", decoded({ type: "ack", client_id: null, id: "7-1" }).clientId, "");
  eq("fields it does not know are ignored", decoded({ type: "ack", id: "7-1", client_id: "c", later: [1] }),
    { type: "ack", id: "7-1", clientId: "c" });
  const frozen = decoded({ type: "presence", room: "lobby", online: ["a"], count: 1 });
  eq("decoded frames cannot be changed", [Object.isFrozen(frozen), Object.isFrozen(frozen.online)], [true, true]);
  const message = { type: "message", room: "lobby", id: "7-1", user: "bob", body: "hi", sent_at: 9 };
  for (const [what, json] of [
    ["not JSON", "{type: 'hello'"],
    ["JSON but not an object", "[1, 2]"],
    ["null", "null"],
    ["a string", '"hello"'],
    ["not text (a binary frame)", new ArrayBuffer(4)],
    ["no type", { user: "alice" }],
    ["an unknown type", { type: "shout", body: "x" }],
    ["a type that is a name on every object", { type: "toString" }],
    ["a type that is not a string", { type: 5 }],
    ["a hello without its deadline", { type: "hello", user: "alice", room: "lobby" }],
    ["a deadline as text", { type: "hello", user: "alice", room: "lobby", expires_at: "5" }],
    ["a rate without its burst", { type: "hello", user: "a", room: "lobby", expires_at: 5, rate: { per_sec: 1 } }],
    ["a rate of zero", { type: "hello", user: "a", room: "lobby", expires_at: 5, rate: { per_sec: 0, burst: 20 } }],
    ["read_markers as text", { type: "hello", user: "a", room: "lobby", expires_at: 5, read_markers: "true" }],
    ["a message without an id", { ...message, id: undefined }],
    ["a message with an empty id", { ...message, id: "" }],
    ["a message id as a number", { ...message, id: 7 }],
    ["a body that is not text", { ...message, body: { html: "<b>" } }],
    ["a time as text", { ...message, sent_at: "9" }],
    ["a time that is not whole", { ...message, sent_at: 9.5 }],
    ["a negative time", { ...message, sent_at: -1 }],
    ["a client_id as a number", { ...message, client_id: 1 }],
    ["an ack without an id", { type: "ack", client_id: "c1" }],
    ["presence with a name that is not text", { type: "presence", room: "lobby", online: ["a", 1], count: 2 }],
    ["presence without its count", { type: "presence", room: "lobby", online: [] }],
    ["a diff whose left is not a list", { type: "presence_diff", room: "lobby", joined: [], left: "bob", count: 1 }],
    ["an unread count as text", { type: "unread", room: "dev", unread: "3", mentions: 0 }],
    ["a negative unread count", { type: "unread", room: "dev", unread: -1, mentions: 0 }],
    ["an unread count without its room", { type: "unread", unread: 1, mentions: 0 }],
    ["an error without its code", { type: "error", message: "no" }],
    ["an error whose message is not text", { type: "error", code: "invalid", message: null }],
    ["room_added without its room", { type: "room_added", visibility: "private" }],
    ["room_added with an empty room", { type: "room_added", room: "", visibility: "private" }],
    ["room_added of an unknown kind", { type: "room_added", room: "x", visibility: "secret" }],
    ["room_added without its kind", { type: "room_added", room: "x" }],
    ["room_removed whose room is not text", { type: "room_removed", room: ["x"] }],
  ]) eq("refused: " + what, json instanceof ArrayBuffer ? decodeFrame(json) : decoded(json), null);

  // the outbox: order, one in flight, pacing, refusals, failures
  let clock = 0;
  const timers = [];
  const frames = [];
  const changes = [];
  const box = new Outbox({
    send: (fr) => { frames.push(fr.client_id); return true; },
    onChange: (e) => changes.push(e.cid + ":" + e.shown),
    onDone: () => {},
    now: () => clock,
    setTimeout: (fn, ms) => { timers.push({ fn, at: clock + ms }); return timers.length; },
    clearTimeout: () => { timers.length = 0; },
  });
  const tick = (ms) => {
    clock += ms;
    for (const t of timers.splice(0)) if (t.at <= clock) t.fn(); else timers.push(t);
  };
  box.add("a", "1");
  box.add("b", "2");
  eq("nothing goes before hello", frames, []);
  box.connected();
  eq("one in flight", frames, ["a"]);
  box.confirmed("a");
  eq("the next after the ack", frames, ["a", "b"]);
  box.refused("b", "rate_limited", "slow down");
  eq("refused for speed: kept, not failed", [box.find("b").status, box.failedCount()], ["queued", 0]);
  tick(100);
  eq("paused", frames, ["a", "b"]);
  tick(1000);
  eq("then the same message again", frames, ["a", "b", "b"]);
  box.add("c", "3");
  box.refused("b", "invalid", "too long");
  eq("a failure holds the ones behind it", [box.view(box.find("b")), box.view(box.find("c")), frames.length],
    ["failed", "held", 3]);
  box.retryUpTo("b");
  eq("retry resends it first", frames.slice(3), ["b"]);
  box.disconnected();
  eq("in flight when the socket died: unsure", box.find("b").status, "unsure");
  box.connected();
  eq("a moment for the replay", frames.length, 4);
  tick(500);
  eq("then resent with its client_id", frames.slice(4), ["b"]);
  box.refused("b", "invalid", "no");
  box.discard("b");
  eq("deleting a failed one lets the rest go", frames.slice(5), ["c"]);
  eq("statuses shown", changes.includes("c:held") && changes.includes("b:failed"), true);
  // The hello's rate, as decoded, paces the outbox: a burst of 2 lets one go at once.
  const slow = [];
  const paced = new Outbox({ send: (fr) => { slow.push(fr.client_id); return true; }, onChange: () => {}, onDone: () => {},
    now: () => 0, setTimeout: () => 1, clearTimeout: () => {} });
  paced.add("x", "1");
  paced.add("y", "2");
  paced.connected(decoded({ type: "hello", user: "a", room: "lobby", expires_at: 5, rate: { per_sec: 1, burst: 2 } }).rate);
  paced.confirmed("x");
  eq("the announced rate is the pace", slow, ["x"]);

  // a send the server could not confirm: retried by itself and shown so,
  // then failed in words that say what to do (not the server's)
  const { UNCONFIRMED } = await import("/static/outbox.js");
  const unsure = [];
  const retried = new Outbox({ send: () => true, onChange: (e) => unsure.push(e.shown + (e.reason ? ":" + e.reason : "")),
    onDone: () => {}, now: () => 0, setTimeout: () => 1, clearTimeout: () => {} });
  retried.add("u", "1");
  retried.connected();
  retried.refused("u", "unavailable", "Not confirmed: … the same client_id …");
  eq("unconfirmed: retrying, not failed", [retried.view(retried.find("u")), retried.failedCount()], ["retrying", 0]);
  for (let i = 0; i < 3; i++) retried.refused("u", "unavailable", "Not confirmed: … the same client_id …");
  eq("then failed, in plain words", unsure, ["sending", "retrying", "failed:" + UNCONFIRMED]);
  eq("the words say what to do", [UNCONFIRMED.startsWith("Not sent"), /client_id|store/.test(UNCONFIRMED)], [true, false]);

  // the session: decoded frames go where they belong
  const { ChatSession } = await import("/static/session.js");
  const calls = [];
  const note = (what) => (...args) => { calls.push([what, ...args]); };
  const ours = new Set(["mine-1"]);
  const session = new ChatSession({
    room: "lobby", me: "alice", lastId: "5-0",
    timeline: { add: (m, cid) => { calls.push(["add", m.id, cid]); return true; }, settle: note("settle") },
    outbox: { find: (cid) => ours.has(cid), confirmed: note("confirmed"), connected: note("connected"),
      refused: (cid, code) => { calls.push(["refused", cid, code]); return { status: cid === "mine-2" ? "failed" : "queued" }; } },
    attention: { nearBottom: () => true, scrollToBottom: () => {}, arrived: note("arrived"), mentioned: note("mentioned"),
      unread: (fr) => calls.push(["unread", fr.room]) },
    presence: { reset: note("presence"), apply: note("diff") },
    reading: { connected: note("reading"), update: () => {} },
    notice: { show: note("notice") },
    sidebar: { unread: (fr) => calls.push(["sidebar unread", fr.room]), added: note("added"), removed: note("removed") },
  });
  const frame = (json) => session.receive(decoded(json));
  frame({ type: "hello", user: "alice", room: "lobby", expires_at: 5, read_markers: true });
  frame({ ...message, room: "other", id: "9-0" });
  frame({ ...message, id: "6-0", body: "hi @alice", client_id: "bob-1" });
  frame({ ...message, id: "7-0", user: "alice", client_id: "mine-1" });
  frame({ type: "ack", client_id: "gone", id: "8-0" });
  frame({ type: "presence", room: "other", online: ["x"], count: 1 });
  frame({ type: "presence_diff", room: "lobby", joined: ["carol"], left: [], count: 3 });
  frame({ type: "unread", room: "dev", unread: 1, mentions: 0 });
  frame({ type: "room_added", room: "secret", visibility: "private" });
  frame({ type: "room_removed", room: "old" });
  frame({ type: "error", code: "rate_limited", message: "" });
  frame({ type: "error", code: "strange", message: "" });
  ours.add("mine-2");
  frame({ type: "error", code: "unavailable", client_id: "mine-2", message: "for programs: the same client_id" });
  eq("each frame to its place", calls, [
    ["connected", null], ["reading", true],
    ["add", "6-0", "bob-1"], ["arrived", { id: "6-0", user: "bob", body: "hi @alice", sentAt: 9 }, true, true],
    ["mentioned", { id: "6-0", user: "bob", body: "hi @alice", sentAt: 9 }],
    ["confirmed", "mine-1"], ["settle", "mine-1", "7-0", 9],
    ["diff", ["carol"], [], 3],
    ["sidebar unread", "dev"], ["unread", "dev"],
    ["added", "secret", "private"], ["removed", "old"],
    ["refused", "", "rate_limited"],
    ["notice", "Something went wrong."],
    ["refused", "mine-2", "unavailable"], ["notice", UNCONFIRMED],
  ]);
  eq("the newest id seen, for the next after=", session.lastId, "7-0");

  // older history, when the page says where to page from (SERVER, LATER)
  const { Renderer } = await import("/static/render.js");
  const { History } = await import("/static/history.js");
  const { Attention } = await import("/static/attention.js");
  const host = document.createElement("div");
  host.hidden = true;
  host.innerHTML = '<div id="u-root" data-history-url="/u/history"></div><div id="u-log">' +
    '<button id="u-older" hidden></button><ol id="u-list"></ol></div><button id="u-jump"></button>' +
    '<div id="u-say"></div><ul id="u-rooms"><li><a data-room="other" href="/chat/other">#other</a></li></ul>' +
    '<ul id="u-online"></ul><span id="u-count"></span>';
  document.body.append(host);
  const q = (id) => host.querySelector("#" + id);
  const renderer = new Renderer(q("u-list"), "alice");
  renderer.bulk([{ id: "20-0", user: "bob", body: "newest", sentAt: Date.now() }]);
  const asked = [];
  const realFetch = window.fetch;
  window.fetch = async (url) => {
    asked.push(String(url));
    const messages = [{ id: "10-0", user: "bob", body: "older", sent_at: Date.now() - 1000 },
      { id: "20-0", user: "bob", body: "a repeat", sent_at: Date.now() }];
    return new Response(JSON.stringify({ messages, start: true }), { headers: { "Content-Type": "application/json" } });
  };
  try {
    const hist = new History({ root: q("u-root"), log: q("u-log"), list: q("u-list"), renderer, button: q("u-older") });
    eq("offers older messages", q("u-older").hidden, false);
    await hist.older();
    eq("asks before the oldest", asked, ["/u/history?before=20-0&limit=50"]);
    eq("prepends, in order, once", Array.from(q("u-list").querySelectorAll(".msg-body"), (b) => b.textContent), ["older", "newest"]);
    eq("then stops at the start", q("u-older").hidden, true);
    const none = new History({ root: document.createElement("div"), log: q("u-log"), list: q("u-list"), renderer, button: q("u-older") });
    await none.older();
    eq("no url, no paging", asked.length, 1);
  } finally {
    window.fetch = realFetch;
  }
  // unread badges for other rooms (SERVER, LATER)
  const att = new Attention({ log: q("u-log"), list: q("u-list"), room: "lobby", me: "alice", jump: q("u-jump"),
    announcer: q("u-say"), notifyButton: null, rooms: q("u-rooms") });
  att.unread(decoded({ type: "unread", room: "other", unread: 3, mentions: 1 }));
  eq("a badge", q("u-rooms").querySelector(".room-badge").textContent, "@1, 1 mention, 3 unread");
  att.unread(decoded({ type: "unread", room: "other", unread: 4, mentions: 2 }));
  eq("mentions counted in words", q("u-rooms").querySelector(".room-badge").textContent, "@2, 2 mentions, 4 unread");
  att.unread(decoded({ type: "unread", room: "other", unread: 0, mentions: 0 }));
  eq("cleared", q("u-rooms").querySelector(".room-badge"), null);
  // who is online: the list, then diffs; sorted ignoring case; the count as sent
  const { Presence } = await import("/static/presence.js");
  const online = new Presence({ list: q("u-online"), count: q("u-count"), stale: null, me: "alice" });
  online.reset(["bob", "alice"], 2);
  online.apply(["Carol", "dave"], ["bob"], 700);
  eq("online", [Array.from(q("u-online").children, (li) => li.textContent + (li.className ? "*" : "")),
    q("u-count").textContent], [["alice*", "Carol", "dave"], "700"]);
  eq("each other name opens a conversation", Array.from(q("u-online").children, (li) => {
    const link = li.querySelector("a");
    return link ? [link.getAttribute("href"), link.getAttribute("aria-label")] : null;
  }), [null, ["/chat/@Carol", "Message Carol"], ["/chat/@dave", "Message dave"]]);
  online.markStale(true);
  eq("marked as last known", q("u-online").classList.contains("stale"), true);
  // rendering: text only, links safe, mentions of the reader marked
  const li = renderer.message({ id: "30-0", user: "bob", body: "<b>hi</b> @Alice https://x.example/?a=<i>", sentAt: Date.now() });
  eq("no markup from text", li.querySelectorAll(".msg-body b, .msg-body i").length, 0);
  const a = li.querySelector(".msg-body a");
  eq("a safe link", [a.getAttribute("href"), a.rel, a.target], ["https://x.example/?a=", "noopener noreferrer", "_blank"]);
  eq("a mention of the reader", [li.classList.contains("mention-of-me"), !!li.querySelector(".mention-me")], [true, true]);
  const author = li.querySelector(".msg-user");
  eq("another's name opens a conversation, and is no tab stop",
    [author.tagName, author.getAttribute("href"), author.tabIndex], ["A", "/chat/@bob", -1]);
  const own = renderer.message({ id: "31-0", user: "alice", body: "mine", sentAt: Date.now() }).querySelector(".msg-user");
  eq("the reader's own name is text", [own.tagName, own.hasAttribute("href")], ["SPAN", false]);
  host.remove();

  done({ failures, checks });
})().catch((e) => done({ failures: ["threw: " + (e && e.stack ? e.stack : e)], checks: 0 }));
