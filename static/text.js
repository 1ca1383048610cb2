/* palaver: message text, pure (no DOM, no state). The body as the server
 * stores it, and a body as tokens: links (http and https only), `code`,
 * ``` blocks and @mentions, which render.js turns into elements and text
 * nodes, never HTML. Unit-tested in the browser journeys
 * (tests/it/browser/js/unit.js).
 */

/** Characters a message may have after trimming (docs/protocol.md §3.2). */
export const MAX_BODY = 2000;

/** The body as the server stores it (src/model.rs clean_body): without
 * trailing whitespace and without blank lines before the first line of
 * text; every line, the first included, keeps its indentation. Shown as
 * typed would differ from what others see. */
export function cleanBody(text) {
  return String(text).replace(/\s+$/, "").replace(/^(?:[^\S\n]*\n)+/, "");
}

export function bodyLength(text) {
  return Array.from(text).length;
}

/**
 * A body too long for one message as the messages to send in its place,
 * in order, each at most `max` characters once cleaned as the server
 * cleans it: cut at the last line end that fits, else the last space,
 * else at `max`. The line end or space cut at is the only character lost.
 */
export function splitBody(body, max = MAX_BODY) {
  const parts = [];
  let rest = Array.from(cleanBody(body));
  while (rest.length > max) {
    let cut = rest.lastIndexOf("\n", max);
    if (cut <= 0) cut = lastSpace(rest, max);
    const skip = cut > 0 ? 1 : 0;
    if (cut <= 0) cut = max;
    const part = cleanBody(rest.slice(0, cut).join(""));
    if (part) parts.push(part);
    rest = Array.from(cleanBody(rest.slice(cut + skip).join("")));
  }
  if (rest.length) parts.push(rest.join(""));
  return parts;
}

function lastSpace(chars, from) {
  for (let i = from; i > 0; i--) if (/\s/.test(chars[i])) return i;
  return -1;
}

/* ---------- tokens ---------- */

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const MENTION_RE = /(^|[^\w@.-])@([A-Za-z0-9_.-]{3,32})/g;
const TRAILING = /[.,;:!?'"]+$/;

/** A link's text without the punctuation that ends the sentence around it;
 * a closing bracket stays only when the link opened one. */
function trimUrl(raw) {
  let url = raw.replace(TRAILING, "");
  for (const [open, close] of [["(", ")"], ["[", "]"], ["{", "}"]]) {
    while (url.endsWith(close) && count(url, open) < count(url, close)) {
      url = url.slice(0, -1).replace(TRAILING, "");
    }
  }
  return url;
}

function count(s, ch) {
  return s.split(ch).length - 1;
}

/** An http(s) URL that parses, as its normalised href; anything else null. */
export function safeHref(text) {
  let url;
  try {
    url = new URL(text);
  } catch (e) {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

/** Plain text into text, link and mention tokens. */
function inline(text, out) {
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    const url = trimUrl(m[0]);
    const href = safeHref(url);
    if (!href) continue;
    if (m.index > last) mentions(text.slice(last, m.index), out);
    out.push({ t: "link", v: url, href });
    last = m.index + url.length;
  }
  if (last < text.length) mentions(text.slice(last), out);
}

function mentions(text, out) {
  let last = 0;
  for (const m of text.matchAll(MENTION_RE)) {
    const start = m.index + m[1].length;
    // A name does not end in a dot: "@bob." is bob at the end of a sentence.
    const name = m[2].replace(/\.+$/, "");
    if (name.length < 3) continue;
    if (start > last) push(out, "text", text.slice(last, start));
    out.push({ t: "mention", v: "@" + name, name });
    last = start + 1 + name.length;
  }
  if (last < text.length) push(out, "text", text.slice(last));
}

function push(out, t, v) {
  const prev = out[out.length - 1];
  if (t === "text" && prev && prev.t === "text") prev.v += v;
  else out.push({ t, v });
}

/**
 * A message body as tokens, in order: `text`, `link` (http/https only, with
 * `href`), `mention` (with `name`), `code` (between single backticks) and
 * `block` (between ``` fences; a language word right after the opening
 * fence is dropped). Joined, the `v`s give back the body except for the
 * backticks and fence lines. Never HTML: the renderer makes text nodes.
 */
export function tokenize(body) {
  const out = [];
  const text = String(body);
  const fence = /```([^\n`]*)\n([\s\S]*?)```|```([\s\S]*?)```/g;
  let last = 0;
  for (const m of text.matchAll(fence)) {
    // A block is a block of its own: the line breaks around it go with it.
    if (m.index > last) spans(text.slice(last, m.index).replace(/\n$/, ""), out);
    let code;
    if (m[3] !== undefined) code = m[3]; // ```on one line```
    else if (/^[\w+#.-]*$/.test(m[1].trim())) code = m[2]; // ```lang
    else code = m[1] + "\n" + m[2]; // text right after the fence is code too
    out.push({ t: "block", v: code.replace(/\n$/, "") });
    last = m.index + m[0].length;
    if (text[last] === "\n") last += 1;
  }
  if (last < text.length) spans(text.slice(last), out);
  return out;
}

/** `code` spans (a backtick pair on one line) among plain text. */
function spans(text, out) {
  const re = /`([^`\n]+)`/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) inline(text.slice(last, m.index), out);
    out.push({ t: "code", v: m[1] });
    last = m.index + m[0].length;
  }
  if (last < text.length) inline(text.slice(last), out);
}

/** Whether `body` mentions `name` (ignoring case, as names are unique). */
export function mentionsName(body, name) {
  if (!name) return false;
  const me = name.toLowerCase();
  return tokenize(body).some((t) => t.t === "mention" && t.name.toLowerCase() === me);
}
