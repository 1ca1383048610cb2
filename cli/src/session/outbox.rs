//! The outbox: stdin's lines, sent strictly in order, one at a time. A line
//! is sent only once the one before it is acknowledged; a line whose outcome
//! is unknown is sent again with the same `client_id` (the server stores it
//! once). Pure: the caller passes the time and carries out what it says.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// The server's limits on a `send` (docs/protocol.md §3).
pub const MAX_BODY_CHARS: usize = 2000;
pub const MAX_CLIENT_ID_CHARS: usize = 64;

/// How long to wait before sending again after `rate_limited`.
pub const RATE_LIMITED_WAIT: Duration = Duration::from_secs(1);
/// How long to wait before sending again after `unavailable` (the store is
/// down; sending at once would only spend the rate limit).
pub const UNAVAILABLE_WAIT: Duration = Duration::from_secs(1);
/// A line unacknowledged this long is sent again (same `client_id`): the
/// contract promises an `ack` or an `error`, and a lost one must not stall
/// every line behind it.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub client_id: String,
    pub body: String,
    /// How many times it has been sent.
    pub attempts: u32,
}

/// Why a line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Nothing but spaces: the server would refuse it.
    Blank,
    /// Over the server's limit, in characters after trimming.
    TooLong(usize),
}

/// What an `error` frame means for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The line in flight is sent again (same `client_id`) once `wait` has passed.
    Resend { client_id: String, attempts: u32, wait: Duration },
    /// The server will never take this line (`invalid`): it is dropped.
    Dropped(Line),
    /// Not about the line in flight.
    NotOurs,
}

#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Line>,
    /// When the head of the queue was last sent, if it is on the wire now.
    in_flight_since: Option<Instant>,
    /// Nothing is sent before this.
    hold_until: Option<Instant>,
}

impl Outbox {
    /// Queues a line under a new `client_id`.
    pub fn push(&mut self, body: String, client_id: String) -> Result<(), Refused> {
        let chars = body.trim().chars().count();
        if chars == 0 {
            return Err(Refused::Blank);
        }
        if chars > MAX_BODY_CHARS {
            return Err(Refused::TooLong(chars));
        }
        debug_assert!(client_id.chars().count() <= MAX_CLIENT_ID_CHARS);
        self.queue.push_back(Line { client_id, body, attempts: 0 });
        Ok(())
    }

    /// Lines not yet acknowledged, the one in flight included.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The line to send now, if any: the head of the queue when nothing is in
    /// flight and no wait is pending, or again when its ack is overdue. It
    /// counts as in flight from here.
    pub fn next_to_send(&mut self, now: Instant) -> Option<&Line> {
        if self.hold_until.is_some_and(|t| now < t) {
            return None;
        }
        self.hold_until = None;
        if self.in_flight_since.is_some_and(|since| now.duration_since(since) < ACK_TIMEOUT) {
            return None;
        }
        let line = self.queue.front_mut()?;
        line.attempts += 1;
        self.in_flight_since = Some(now);
        Some(line)
    }

    /// When [`Outbox::next_to_send`] may have something new to say, if it is
    /// waiting on time (a hold, or an ack that could become overdue).
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        self.hold_until.or(self.in_flight_since.map(|since| since + ACK_TIMEOUT))
    }

    /// An `ack`: the line in flight is done, if that is the one; the next may go.
    pub fn on_ack(&mut self, client_id: &str) -> Option<Line> {
        if self.in_flight_since.is_none() || self.queue.front()?.client_id != client_id {
            // A late ack for a line already acknowledged (after a resend).
            return None;
        }
        self.in_flight_since = None;
        self.queue.pop_front()
    }

    /// An `error` frame. One naming no `client_id` is taken as about the line
    /// in flight when its code is about sending (`rate_limited`,
    /// `unavailable`), since a server that omits it cannot mean anything else.
    pub fn on_error(&mut self, code: &str, client_id: Option<&str>, now: Instant) -> Verdict {
        let Some(head) = self.queue.front() else { return Verdict::NotOurs };
        if self.in_flight_since.is_none() {
            return Verdict::NotOurs;
        }
        match client_id {
            Some(id) if id != head.client_id => return Verdict::NotOurs,
            None if code == "invalid" => return Verdict::NotOurs,
            _ => {}
        }
        let wait = match code {
            "rate_limited" => RATE_LIMITED_WAIT,
            "unavailable" => UNAVAILABLE_WAIT,
            _ => {
                // `invalid`, or a code this client does not know: sending
                // the same line again would get the same answer.
                self.in_flight_since = None;
                return Verdict::Dropped(self.queue.pop_front().expect("a head"));
            }
        };
        self.in_flight_since = None;
        self.hold_until = Some(now + wait);
        Verdict::Resend { client_id: head.client_id.clone(), attempts: head.attempts, wait }
    }

    /// The socket is gone: the line in flight has an unknown outcome and goes
    /// first on the next socket, under the same `client_id`.
    pub fn on_disconnect(&mut self) {
        self.in_flight_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(lines: &[&str]) -> Outbox {
        let mut o = Outbox::default();
        for (i, l) in lines.iter().enumerate() {
            o.push(l.to_string(), format!("c{i}")).unwrap();
        }
        o
    }

    fn sent(o: &mut Outbox, now: Instant) -> Option<(String, String, u32)> {
        o.next_to_send(now).map(|l| (l.client_id.clone(), l.body.clone(), l.attempts))
    }

    #[test]
    fn one_line_in_flight_at_a_time_in_order() {
        let t = Instant::now();
        let mut o = outbox(&["one", "two"]);
        assert_eq!(sent(&mut o, t), Some(("c0".into(), "one".into(), 1)));
        assert_eq!(sent(&mut o, t), None, "two waits for one's ack");
        assert_eq!(o.on_ack("c1"), None, "an ack for a line not in flight changes nothing");
        assert_eq!(sent(&mut o, t), None);
        assert_eq!(o.on_ack("c0").unwrap().body, "one");
        assert_eq!(o.on_ack("c0"), None, "a second ack for it changes nothing");
        assert_eq!(sent(&mut o, t), Some(("c1".into(), "two".into(), 1)));
        assert_eq!(o.on_ack("c1").unwrap().body, "two");
        assert!(o.is_empty());
        assert_eq!(sent(&mut o, t), None);
        assert_eq!(o.next_wakeup(), None);
    }

    #[test]
    fn unavailable_resends_the_same_line_under_the_same_id_after_a_pause() {
        let t = Instant::now();
        let mut o = outbox(&["one", "two"]);
        sent(&mut o, t);
        assert_eq!(
            o.on_error("unavailable", Some("c0"), t),
            Verdict::Resend { client_id: "c0".into(), attempts: 1, wait: UNAVAILABLE_WAIT }
        );
        assert_eq!(o.next_wakeup(), Some(t + UNAVAILABLE_WAIT));
        assert_eq!(sent(&mut o, t + UNAVAILABLE_WAIT / 2), None, "not before the pause, and not `two`");
        assert_eq!(sent(&mut o, t + UNAVAILABLE_WAIT), Some(("c0".into(), "one".into(), 2)));
        assert_eq!(o.on_ack("c0").unwrap().attempts, 2);
        assert_eq!(sent(&mut o, t + UNAVAILABLE_WAIT).unwrap().0, "c1");
    }

    #[test]
    fn rate_limited_waits_a_second_and_keeps_the_order() {
        let t = Instant::now();
        let mut o = outbox(&["one", "two"]);
        sent(&mut o, t);
        let v = o.on_error("rate_limited", Some("c0"), t);
        assert_eq!(v, Verdict::Resend { client_id: "c0".into(), attempts: 1, wait: Duration::from_secs(1) });
        assert_eq!(sent(&mut o, t + Duration::from_millis(999)), None);
        assert_eq!(sent(&mut o, t + Duration::from_secs(1)).unwrap().0, "c0");
    }

    #[test]
    fn an_error_without_a_client_id_about_sending_is_about_the_line_in_flight() {
        let t = Instant::now();
        let mut o = outbox(&["one"]);
        assert_eq!(o.on_error("rate_limited", None, t), Verdict::NotOurs, "nothing in flight yet");
        sent(&mut o, t);
        assert!(matches!(o.on_error("rate_limited", None, t), Verdict::Resend { .. }));
        sent(&mut o, t + RATE_LIMITED_WAIT);
        assert_eq!(o.on_error("invalid", None, t), Verdict::NotOurs, "invalid could be about any frame");
        assert_eq!(o.on_error("unavailable", Some("other"), t), Verdict::NotOurs);
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn invalid_drops_the_line_and_the_next_one_goes() {
        let t = Instant::now();
        let mut o = outbox(&["one", "two"]);
        sent(&mut o, t);
        assert_eq!(
            o.on_error("invalid", Some("c0"), t),
            Verdict::Dropped(Line { client_id: "c0".into(), body: "one".into(), attempts: 1 })
        );
        assert_eq!(sent(&mut o, t).unwrap().0, "c1");
    }

    #[test]
    fn a_disconnect_puts_the_line_in_flight_first_on_the_next_socket() {
        let t = Instant::now();
        let mut o = outbox(&["one", "two"]);
        sent(&mut o, t);
        o.on_disconnect();
        assert_eq!(sent(&mut o, t), Some(("c0".into(), "one".into(), 2)));
        // A pause from before the disconnect still holds.
        o.on_error("rate_limited", Some("c0"), t);
        o.on_disconnect();
        assert_eq!(sent(&mut o, t), None);
        assert_eq!(sent(&mut o, t + RATE_LIMITED_WAIT).unwrap().0, "c0");
    }

    #[test]
    fn an_overdue_ack_sends_the_line_again() {
        let t = Instant::now();
        let mut o = outbox(&["one", "two"]);
        sent(&mut o, t);
        assert_eq!(o.next_wakeup(), Some(t + ACK_TIMEOUT));
        assert_eq!(sent(&mut o, t + ACK_TIMEOUT - Duration::from_millis(1)), None);
        assert_eq!(sent(&mut o, t + ACK_TIMEOUT), Some(("c0".into(), "one".into(), 2)));
    }

    #[test]
    fn blank_and_overlong_lines_are_refused_before_the_server_sees_them() {
        let mut o = Outbox::default();
        assert_eq!(o.push("   ".into(), "a".into()), Err(Refused::Blank));
        assert_eq!(o.push("".into(), "a".into()), Err(Refused::Blank));
        assert_eq!(o.push("é".repeat(2001), "a".into()), Err(Refused::TooLong(2001)));
        // The limit counts characters (not bytes) after trimming.
        assert_eq!(o.push(format!("  {}  ", "é".repeat(2000)), "a".into()), Ok(()));
        assert_eq!(o.len(), 1);
    }
}
