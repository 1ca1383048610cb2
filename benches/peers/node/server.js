'use strict';
// palaver's Node peer, for benches/loadgen.rs: the usual Node way to do what
// palaver does at a WebSocket upgrade. express + express-session with
// connect-redis (sessions in Redis behind a signed cookie) + ws, the
// upgrade authenticated the way ws's own express-session example does it:
// run the session middleware on the upgrade request, refuse 401 without a
// signed-in session, then hand the socket to ws.
//
// Passwords are hashed with salted SHA-256, not Argon2: the benchmarks
// compare handshake, socket and fan-out costs, not password hashing, and a
// slow hash here would only slow the set-up. Do not copy that part.
//
// Environment: PORT, HOST (127.0.0.1), REDIS_URL (redis://127.0.0.1:6379),
// FANOUT: `local` (default; a room's messages go to this process's sockets)
// or `redis` (every instance publishes to and delivers from one Redis
// channel, so several instances share rooms, in one order).
// Logout events always go over Redis pub/sub: a logout on any instance
// closes that session's sockets on every instance with 4401.

const http = require('node:http');
const crypto = require('node:crypto');
const express = require('express');
const session = require('express-session');
const { RedisStore } = require('connect-redis');
const { createClient } = require('redis');
const { WebSocketServer } = require('ws');

const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || '127.0.0.1';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const FANOUT = process.env.FANOUT || 'local';
const EVENTS = 'peer:events';
const MESSAGES = 'peer:messages';
const ROOM_NAME = /^[a-z0-9-]{1,32}$/;

const redis = createClient({ url: REDIS_URL });
const subscriber = redis.duplicate();

const sessionParser = session({
  store: new RedisStore({ client: redis, prefix: 'peer:sess:' }),
  name: 'peer_session',
  secret: process.env.SESSION_SECRET || 'peer-benchmark-secret',
  resave: false,
  saveUninitialized: false,
  rolling: true,
  cookie: { httpOnly: true, sameSite: 'lax', maxAge: 30 * 60 * 1000 },
});

// Open sockets: by room (fan-out) and by session id (logout).
const rooms = new Map();
const bySession = new Map();

function addTo(map, key, ws) {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  set.add(ws);
}

function removeFrom(map, key, ws) {
  const set = map.get(key);
  if (!set) return;
  set.delete(ws);
  if (set.size === 0) map.delete(key);
}

function broadcast(room, text) {
  const members = rooms.get(room);
  if (!members) return;
  for (const ws of members) ws.send(text);
}

function closeSession(sid) {
  const sockets = bySession.get(sid);
  if (!sockets) return;
  for (const ws of sockets) ws.close(4401, 'logged out');
}

function hashPassword(password, salt) {
  return crypto.createHash('sha256').update(salt).update(password).digest('hex');
}

const userKey = (name) => `peer:user:${name.toLowerCase()}`;

const app = express();
app.disable('x-powered-by');
app.use(express.urlencoded({ extended: false, limit: '16kb' }));
app.use(sessionParser);

function signIn(req, res, username) {
  req.session.regenerate((err) => {
    if (err) return res.status(503).send('store unavailable');
    req.session.user = username;
    req.session.save((err) => {
      if (err) return res.status(503).send('store unavailable');
      res.redirect(303, '/chat');
    });
  });
}

app.post('/register', async (req, res) => {
  const { username, password } = req.body || {};
  if (typeof username !== 'string' || typeof password !== 'string' || !/^[A-Za-z0-9_.-]{3,32}$/.test(username) || password.length < 8) {
    return res.status(422).send('invalid username or password');
  }
  const salt = crypto.randomBytes(16).toString('hex');
  try {
    const created = await redis.set(userKey(username), `${salt}:${hashPassword(password, salt)}:${username}`, { NX: true });
    if (!created) return res.status(409).send('name taken');
  } catch {
    return res.status(503).send('store unavailable');
  }
  signIn(req, res, username);
});

app.post('/login', async (req, res) => {
  const { username, password } = req.body || {};
  if (typeof username !== 'string' || typeof password !== 'string') return res.status(422).send('missing field');
  let stored;
  try {
    stored = await redis.get(userKey(username));
  } catch {
    return res.status(503).send('store unavailable');
  }
  const [salt, hash, name] = (stored || '::').split(':');
  const given = Buffer.from(hashPassword(password, salt || ''), 'hex');
  const expected = Buffer.from(hash || '', 'hex');
  if (!stored || given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    return res.status(401).send('Wrong username or password.');
  }
  signIn(req, res, name);
});

app.post('/logout', (req, res) => {
  const sid = req.sessionID;
  if (!req.session.user) return res.redirect(303, '/login');
  req.session.destroy(async (err) => {
    if (err) return res.status(503).send('store unavailable');
    closeSession(sid);
    try {
      await redis.publish(EVENTS, JSON.stringify({ type: 'logout', sid }));
    } catch {
      // The session is gone from the store; other instances' sockets stay
      // until they next check. The benchmark would see it.
    }
    res.clearCookie('peer_session');
    res.redirect(303, '/login');
  });
});

app.get('/healthz', (req, res) => res.json({ status: 'ok' }));

const server = http.createServer(app);
const wss = new WebSocketServer({ noServer: true, maxPayload: 16 * 1024 });

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => socket.destroy());
  const url = new URL(req.url, 'http://peer');
  const room = url.searchParams.get('room') || 'lobby';
  if (url.pathname !== '/ws' || !ROOM_NAME.test(room)) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    return;
  }
  sessionParser(req, {}, (err) => {
    if (err) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n');
      return;
    }
    if (!req.session || !req.session.user) {
      socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => onSocket(ws, req.session, req.sessionID, room));
  });
});

let nextLocalId = 0;

async function post(ws, user, room, frame) {
  const body = typeof frame.body === 'string' ? frame.body.trim() : '';
  const clientId = typeof frame.client_id === 'string' ? frame.client_id : '';
  if (body.length === 0 || body.length > 2000 || clientId.length > 64) {
    ws.send(JSON.stringify({ type: 'error', code: 'invalid', message: 'invalid send', client_id: clientId }));
    return;
  }
  const message = { type: 'message', room, user, body, sent_at: Date.now(), client_id: clientId };
  let id;
  if (FANOUT === 'redis') {
    // One id counter and one channel for every instance; numbered and
    // published in one script, so the ids' order is the delivery order.
    try {
      id = String(await redis.sendCommand(['EVALSHA', publishSha, '1', 'peer:message-id', MESSAGES, JSON.stringify(message)]));
    } catch {
      ws.send(JSON.stringify({ type: 'error', code: 'unavailable', message: 'store unavailable', client_id: clientId }));
      return;
    }
  } else {
    id = String(++nextLocalId);
    broadcast(room, JSON.stringify({ ...message, id }));
  }
  ws.send(JSON.stringify({ type: 'ack', client_id: clientId, id }));
}

function onSocket(ws, sess, sid, room) {
  const user = sess.user;
  ws.isAlive = true;
  ws.on('pong', () => {
    ws.isAlive = true;
  });
  addTo(rooms, room, ws);
  addTo(bySession, sid, ws);
  ws.on('close', () => {
    removeFrom(rooms, room, ws);
    removeFrom(bySession, sid, ws);
  });
  ws.on('error', () => ws.terminate());
  ws.send(JSON.stringify({ type: 'hello', user, room, expires_at: sess.cookie.expires ? sess.cookie.expires.getTime() : null }));
  ws.on('message', (data, isBinary) => {
    ws.isAlive = true;
    let frame;
    try {
      frame = isBinary ? null : JSON.parse(data.toString());
    } catch {
      frame = null;
    }
    if (frame && frame.type === 'send') {
      post(ws, user, room, frame);
    } else {
      ws.send(JSON.stringify({ type: 'error', code: 'invalid', message: 'not understood' }));
    }
  });
}

// ws's documented heartbeat: ping every 20 s, drop a socket that did not
// answer the previous ping.
setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, 20_000).unref();

const PUBLISH = `local id = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[2])
return id`;
let publishSha;

async function main() {
  await redis.connect();
  await subscriber.connect();
  publishSha = await redis.scriptLoad(PUBLISH);
  await subscriber.subscribe(EVENTS, (text) => {
    const event = JSON.parse(text);
    if (event.type === 'logout') closeSession(event.sid);
  });
  if (FANOUT === 'redis') {
    await subscriber.subscribe(MESSAGES, (text) => {
      const space = text.indexOf(' ');
      const message = JSON.parse(text.slice(space + 1));
      message.id = text.slice(0, space);
      broadcast(message.room, JSON.stringify(message));
    });
  }
  server.listen(PORT, HOST, () => console.log(`node peer on http://${HOST}:${PORT} (fan-out: ${FANOUT})`));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
