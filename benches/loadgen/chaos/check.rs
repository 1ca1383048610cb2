//! The checker: reads the journal and the rooms' histories (XRANGE at the
//! end) and lists every broken promise, each with when and to whom.
//!
//! Rules (docs/protocol.md §3.4, §4, §5.5, §5.9, §6.4, §6.5; docs/cluster.md
//! "What a failover can still do"):
//!
//! 1. **Acked means kept, once.** Every acked message is in its room's
//!    history under the acked id; no `client_id` is stored twice, except on
//!    a cluster (a resend after a failover: counted); nothing is in a
//!    history that no client sent.
//! 2. **In order, no gap, no repeat.** Each socket's message ids are the
//!    history's, in its order, each following the one before it with
//!    nothing stored between; the first follows `after` when the socket
//!    asked for one. A socket that stayed open got everything stored while
//!    it was open up to 2 s before it closed (no check within 10 s of a
//!    fault). On a cluster, an id that is in no history is allowed when its
//!    sender's `client_id` is (the copy a failover lost: counted).
//! 3. **No socket outlives its access.** A socket closes within
//!    `EVENT_BOUND` of the answer to the request that ended its session
//!    (logout, logout everywhere, a sign-in over it, a spent refresh token
//!    after the grace) or removed its user from its private room; within
//!    `REVALIDATE_INTERVAL_SECS` (+ `EVENT_BOUND`) of the end of a fault
//!    that could lose that event; and within `DEADLINE_BOUND` of its
//!    session's expiry or its access token's. A stopped instance can do
//!    nothing: its sockets' bounds count from when it was continued.
//! 4. **Nothing of a private room reaches a non-member.** No `hello` in a
//!    private room for a user who was certainly not a member from the
//!    upgrade to the `hello`; no socket opened on a session certainly ended.
//! 5. **Refused stays refused.** No credential of a session certainly
//!    ended (or past its absolute lifetime), tried again, is accepted; a
//!    spent refresh token presented after the grace is refused.

use std::collections::{BTreeMap, HashMap, HashSet};

use palaver::model::MessageId;

use crate::chaos::journal::{from_unix_ms, secs, Closed, Credential, Journal, Ms, SocketLog};

/// A socket's close may come this long after the answer to the request
/// that ended its access (docs/protocol.md §4: "within a second").
pub(crate) const EVENT_BOUND: Ms = 1_000;
/// ... and this long after its deadline (the timer, the store read).
pub(crate) const DEADLINE_BOUND: Ms = 1_000;
/// A session's expiry is computed in whole seconds.
const ROUNDING: Ms = 1_000;

/// One stored message, as XRANGE returns it.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) id: MessageId,
    pub(crate) user: String,
    pub(crate) client_id: Option<String>,
}

pub(crate) struct Limits {
    pub(crate) revalidate: Ms,
    pub(crate) session_ttl: Ms,
    pub(crate) session_max: Ms,
    pub(crate) cluster: bool,
    /// When the load stopped (the final closes by the clients begin).
    pub(crate) load_end: Ms,
}

#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) sent: usize,
    pub(crate) acked: usize,
    pub(crate) stored: usize,
    pub(crate) deliveries: usize,
    pub(crate) sockets: usize,
    pub(crate) refused_upgrades: BTreeMap<String, usize>,
    pub(crate) closes: BTreeMap<String, usize>,
    pub(crate) demands: BTreeMap<&'static str, usize>,
    /// Demands whose bound was stretched by a fault that could lose events.
    pub(crate) stretched: usize,
    pub(crate) stored_twice: usize,
    pub(crate) lost_copies: usize,
    pub(crate) tail_checked: usize,
    pub(crate) retries: usize,
    pub(crate) retries_refused: usize,
    pub(crate) ends: BTreeMap<&'static str, usize>,
    pub(crate) probes_refused: usize,
}

pub(crate) struct Violation {
    pub(crate) rule: &'static str,
    pub(crate) at: Ms,
    pub(crate) text: String,
}

pub(crate) struct Verdict {
    pub(crate) violations: Vec<Violation>,
    pub(crate) counts: Counts,
}

struct Checker<'a> {
    journal: &'a Journal,
    limits: &'a Limits,
    violations: Vec<Violation>,
    counts: Counts,
}

fn describe(s: &SocketLog) -> String {
    let credential = match s.credential {
        Credential::Cookie => "cookie",
        Credential::Token => "token",
    };
    format!(
        "socket #{} of client {} ({}, {credential} session #{}) in `{}` on instance {}",
        s.id, s.client, s.user, s.session, s.room, s.instance
    )
}

impl Checker<'_> {
    fn violate(&mut self, rule: &'static str, at: Ms, text: String) {
        self.violations.push(Violation { rule, at, text });
    }

    /// When `instance` was stopped: (from, continued).
    fn stops(&self, instance: usize) -> impl Iterator<Item = (Ms, Ms)> + '_ {
        self.journal
            .faults
            .iter()
            .filter(move |f| f.kind == "stop-instance" && f.instance == Some(instance))
            .map(|f| (f.start, f.undone))
    }

    /// Spans in which an event meant for a socket on `instance` could be
    /// lost, with what caused each: faults of the store that lose events,
    /// and spans in which the instance was not ready (not subscribed).
    fn lossy(&self, instance: usize) -> Vec<(Ms, Ms, String)> {
        let faults = self
            .journal
            .faults
            .iter()
            .filter(|f| f.loses_events && f.instance.is_none_or(|i| i == instance))
            .map(|f| (f.start, f.recovered, format!("{} ({}) at {}", f.kind, f.target, secs(f.start))));
        let unready = self
            .journal
            .unready
            .iter()
            .filter(|u| u.instance == instance)
            .map(|u| (u.from, u.to, format!("instance {instance} unready ({}) at {}", u.why, secs(u.from))));
        faults.chain(unready).collect()
    }

    /// The bound for closing a socket on `instance` after a request sent
    /// at `sent` and answered at `answered` ended its access; and why, when
    /// a fault stretched it.
    fn event_bound(&mut self, instance: usize, sent: Ms, answered: Ms) -> (Ms, Option<String>) {
        let mut bound = answered + EVENT_BOUND;
        let mut why = None;
        let lossy = self.lossy(instance);
        for _ in 0..4 {
            for (from, to, what) in &lossy {
                if *from <= bound && *to + 1_000 >= sent {
                    let stretched = answered.max(*to) + self.limits.revalidate + EVENT_BOUND;
                    if stretched > bound {
                        bound = stretched;
                        why = Some(format!("{what} may have lost the event: REVALIDATE_INTERVAL_SECS after it"));
                    }
                }
            }
            for (from, to) in self.stops(instance).collect::<Vec<_>>() {
                if from <= bound && to >= sent && to + EVENT_BOUND > bound {
                    bound = to + EVENT_BOUND;
                    why = Some(format!("instance {instance} stopped from {} to {}", secs(from), secs(to)));
                }
            }
        }
        if why.as_deref().is_some_and(|w| w.contains("REVALIDATE")) {
            self.counts.stretched += 1;
        }
        (bound, why)
    }

    /// The bound for closing a socket on `instance` at a deadline.
    fn deadline_bound(&self, instance: usize, deadline: Ms) -> (Ms, Option<String>) {
        let mut bound = deadline + DEADLINE_BOUND;
        let mut why = None;
        for _ in 0..4 {
            for (from, to) in self.stops(instance) {
                if from <= bound && to >= deadline && to + DEADLINE_BOUND > bound {
                    bound = to + DEADLINE_BOUND;
                    why = Some(format!("instance {instance} stopped from {} to {}", secs(from), secs(to)));
                }
            }
            // The deadline's store read waits out a store that does not
            // answer, then closes (1013).
            for f in self.journal.faults.iter().filter(|f| f.instance.is_none()) {
                if f.start <= bound && f.undone >= deadline && f.undone + 3_000 > bound {
                    bound = f.undone + 3_000;
                    why = Some(format!("{} from {} to {}", f.kind, secs(f.start), secs(f.undone)));
                }
            }
        }
        (bound, why)
    }

    /// The latest a session can expire: its last slide plus the TTL,
    /// never past its absolute lifetime.
    fn expiry(&self, session: usize) -> Ms {
        let s = &self.journal.sessions[session];
        (s.last_slide + self.limits.session_ttl).min(s.signed_in + self.limits.session_max) + ROUNDING
    }

    /// Whether `user` was certainly not a member of `room` throughout
    /// `from..=to`: every add that could have taken effect by `to` was
    /// certainly undone by a removal answered before `from`.
    fn non_member_throughout(&self, room: &str, user: &str, from: Ms, to: Ms) -> bool {
        let changes: Vec<_> = self.journal.memberships.iter().filter(|m| m.room == room && m.user == user).collect();
        changes.iter().filter(|a| a.added && a.sent <= to).all(|add| {
            changes.iter().any(|r| {
                !r.added && add.answered.is_some_and(|a| a <= r.sent) && r.answered.is_some_and(|at| at < from)
            })
        })
    }

    /// Whether an add of `user` to `room` could have landed after a
    /// removal sent at `removal_sent`, by `by`.
    fn added_again(&self, room: &str, user: &str, removal_sent: Ms, by: Ms) -> bool {
        self.journal.memberships.iter().any(|m| {
            m.room == room && m.user == user && m.added && m.sent <= by && m.answered.is_none_or(|a| a > removal_sent)
        })
    }

    /// Rules 3 and 4 for one socket.
    fn access(&mut self, s: &SocketLog, private: &HashSet<&str>) {
        let Some(hello) = s.hello else { return };
        let closed_at = s.closed.as_ref().map_or(u64::MAX, |c| c.0);
        // The earliest moment by which it had to be closed, and why.
        let mut demands: Vec<(Ms, String)> = Vec::new();
        if let Some(end) = self.journal.ended(s.session) {
            if s.upgrade_sent > end.answered {
                self.violate(
                    "refused stays refused",
                    hello,
                    format!(
                        "{} got `hello` at {}: its session had been ended by {} answered at {}",
                        describe(s),
                        secs(hello),
                        end.by,
                        secs(end.answered)
                    ),
                );
            }
            let (bound, why) = self.event_bound(s.instance, end.sent, end.answered);
            *self.counts.demands.entry("session ended").or_default() += 1;
            demands.push((
                bound,
                format!(
                    "its session was ended by {} (sent at {}, answered at {}){}",
                    end.by,
                    secs(end.sent),
                    secs(end.answered),
                    why.map(|w| format!("; {w}")).unwrap_or_default()
                ),
            ));
        }
        let expiry = self.expiry(s.session);
        let (bound, why) = self.deadline_bound(s.instance, expiry);
        *self.counts.demands.entry("session expiry").or_default() += 1;
        demands.push((
            bound,
            format!(
                "its session could live until {} at the latest (last slide, SESSION_TTL_SECS, \
                 SESSION_MAX_LIFETIME_SECS){}",
                secs(expiry),
                why.map(|w| format!("; {w}")).unwrap_or_default()
            ),
        ));
        if !s.token_exps.is_empty() {
            // Each accepted `reauth` moves the token's expiry, if it came
            // before the socket had to close.
            let mut deadline = from_unix_ms(s.token_exps[0].1 * 1000);
            for &(at, exp) in &s.token_exps[1..] {
                if at <= deadline + DEADLINE_BOUND {
                    deadline = deadline.max(from_unix_ms(exp * 1000));
                }
            }
            let (bound, why) = self.deadline_bound(s.instance, deadline);
            *self.counts.demands.entry("token expiry").or_default() += 1;
            demands.push((
                bound,
                format!(
                    "its access token expired at {}{}",
                    secs(deadline),
                    why.map(|w| format!("; {w}")).unwrap_or_default()
                ),
            ));
        }
        if private.contains(s.room.as_str()) {
            if self.non_member_throughout(&s.room, &s.user, s.upgrade_sent, hello) {
                self.violate(
                    "nothing of a private room reaches a non-member",
                    hello,
                    format!(
                        "{} got `hello` at {} (upgrade sent at {}), although {} was not a member of `{}` then",
                        describe(s),
                        secs(hello),
                        secs(s.upgrade_sent),
                        s.user,
                        s.room
                    ),
                );
            }
            let removals: Vec<_> = self
                .journal
                .memberships
                .iter()
                .filter(|m| m.room == s.room && m.user == s.user && !m.added)
                .filter_map(|m| Some((m.sent, m.answered?)))
                .filter(|&(_, answered)| answered >= hello && answered < closed_at)
                .collect();
            for (sent, answered) in removals {
                let (bound, why) = self.event_bound(s.instance, sent, answered);
                if self.added_again(&s.room, &s.user, sent, bound) {
                    continue;
                }
                *self.counts.demands.entry("removed from the room").or_default() += 1;
                demands.push((
                    bound,
                    format!(
                        "{} was removed from `{}` (DELETE sent at {}, answered at {}){}",
                        s.user,
                        s.room,
                        secs(sent),
                        secs(answered),
                        why.map(|w| format!("; {w}")).unwrap_or_default()
                    ),
                ));
            }
        }
        let Some((bound, why)) = demands.into_iter().min_by_key(|d| d.0) else { return };
        if closed_at <= bound {
            return;
        }
        let late = s.frames.iter().find(|f| f.at > bound);
        let how = match &s.closed {
            Some((at, Closed::ByClient)) => format!("was still open when the client closed it at {}", secs(*at)),
            Some((at, closed)) => format!("closed only at {} ({closed:?})", secs(*at)),
            None => "never closed".to_owned(),
        };
        let frame = late.map_or(String::new(), |f| format!("; it got a `{}` frame at {}", f.kind, secs(f.at)));
        self.violate(
            if why.contains("removed") {
                "nothing of a private room reaches a non-member"
            } else {
                "no socket outlives its session"
            },
            bound,
            format!("{} had to be closed by {} because {why}, but {how}{frame}", describe(s), secs(bound)),
        );
    }

    /// Rules 1 and 2.
    fn messages(&mut self, histories: &HashMap<String, Vec<Entry>>) {
        let mut sent_ids: HashSet<(&str, &str)> = HashSet::new();
        for m in &self.journal.sent {
            sent_ids.insert((m.user.as_str(), m.client_id.as_str()));
            self.counts.sent += 1;
        }
        // Rule 1.
        let mut index: HashMap<&str, HashMap<MessageId, usize>> = HashMap::new();
        let mut by_client_id: HashMap<&str, HashMap<(&str, &str), Vec<usize>>> = HashMap::new();
        for (room, entries) in histories {
            self.counts.stored += entries.len();
            let ids = index.entry(room).or_default();
            let copies = by_client_id.entry(room).or_default();
            for (i, e) in entries.iter().enumerate() {
                ids.insert(e.id, i);
                let cid = e.client_id.as_deref().unwrap_or_default();
                copies.entry((e.user.as_str(), cid)).or_default().push(i);
                if !sent_ids.contains(&(e.user.as_str(), cid)) {
                    self.violate(
                        "acked means kept, once",
                        from_unix_ms(e.id.ms),
                        format!("`{room}` holds {} ({}, client_id {cid:?}), which no client sent", e.id, e.user),
                    );
                }
            }
            for ((user, cid), at) in copies.iter().filter(|(_, at)| at.len() > 1) {
                let ids: Vec<String> = at.iter().map(|&i| entries[i].id.to_string()).collect();
                if self.limits.cluster {
                    self.counts.stored_twice += at.len() - 1;
                } else {
                    self.violate(
                        "acked means kept, once",
                        from_unix_ms(entries[at[1]].id.ms),
                        format!("`{room}` holds {user}'s client_id {cid} {} times: {}", at.len(), ids.join(", ")),
                    );
                }
            }
        }
        for m in &self.journal.sent {
            let Some((at, id)) = m.acked else { continue };
            self.counts.acked += 1;
            let stored = index.get(m.room.as_str()).and_then(|ids| ids.get(&id)).map(|&i| &histories[&m.room][i]);
            match stored {
                Some(e) if e.client_id.as_deref() == Some(m.client_id.as_str()) => {}
                Some(e) => self.violate(
                    "acked means kept, once",
                    at,
                    format!(
                        "{}'s {} was acked as {id} in `{}` at {}, but {id} there is {}'s {:?}",
                        m.user,
                        m.client_id,
                        m.room,
                        secs(at),
                        e.user,
                        e.client_id
                    ),
                ),
                None => self.violate(
                    "acked means kept, once",
                    at,
                    format!(
                        "{}'s {} was acked as {id} in `{}` at {} (sent first at {}, {} attempts), and is not in its \
                         history",
                        m.user,
                        m.client_id,
                        m.room,
                        secs(at),
                        secs(m.first_sent),
                        m.attempts
                    ),
                ),
            }
        }
        // Rule 2.
        let empty = Vec::new();
        for socket in &self.journal.sockets {
            let s = socket.lock().unwrap();
            let Some(hello) = s.hello else { continue };
            let entries = histories.get(&s.room).unwrap_or(&empty);
            let ids = index.get(s.room.as_str());
            let mut previous: Option<usize> =
                s.after.map(|after| entries.partition_point(|e| e.id <= after)).and_then(|n| n.checked_sub(1));
            let mut expect_first = s.after.is_some();
            let mut broke = false;
            for f in &s.frames {
                let Some((id, user, cid)) = &f.message else { continue };
                self.counts.deliveries += 1;
                let Some(&i) = ids.and_then(|ids| ids.get(id)) else {
                    let copy_kept = cid.as_deref().is_some_and(|cid| {
                        by_client_id.get(s.room.as_str()).is_some_and(|c| c.contains_key(&(user.as_str(), cid)))
                    });
                    if self.limits.cluster && copy_kept {
                        self.counts.lost_copies += 1;
                    } else {
                        self.violate(
                            "in order, no gap, no repeat",
                            f.at,
                            format!(
                                "{} got {id} ({user}, {cid:?}) at {}, which is in no history",
                                describe(&s),
                                secs(f.at)
                            ),
                        );
                        broke = true;
                    }
                    continue;
                };
                let expected = previous.map_or(0, |p| p + 1);
                if let Some(p) = previous.filter(|&p| i <= p) {
                    self.violate(
                        "in order, no gap, no repeat",
                        f.at,
                        format!(
                            "{} got {id} at {} after {}: a repeat or out of order",
                            describe(&s),
                            secs(f.at),
                            entries[p].id
                        ),
                    );
                    broke = true;
                } else if (previous.is_some() || expect_first) && i != expected {
                    let after = match previous {
                        Some(p) => format!("after {}", entries[p].id),
                        None => format!("first after `after={}`", s.after.unwrap()),
                    };
                    self.violate(
                        "in order, no gap, no repeat",
                        f.at,
                        format!(
                            "{} got {id} at {} {after}: {} stored between them never came (the first: {}, {}'s {:?})",
                            describe(&s),
                            secs(f.at),
                            i - expected,
                            entries[expected].id,
                            entries[expected].user,
                            entries[expected].client_id
                        ),
                    );
                    broke = true;
                }
                previous = Some(i);
                expect_first = false;
                if broke {
                    break;
                }
            }
            if broke {
                continue;
            }
            // The tail: what was stored while it was open came, up to 2 s
            // before it closed, unless a fault was near.
            let Some((closed_at, _)) = s.closed.clone() else { continue };
            let faulty = self.journal.faults.iter().any(|f| {
                f.start <= closed_at && f.recovered + 10_000 >= closed_at && f.instance.is_none_or(|i| i == s.instance)
            }) || self
                .journal
                .unready
                .iter()
                .any(|u| u.instance == s.instance && u.from <= closed_at && u.to + 10_000 >= closed_at);
            if faulty {
                continue;
            }
            let cutoff = closed_at.saturating_sub(2_000);
            let from = previous.map_or_else(|| entries.partition_point(|e| from_unix_ms(e.id.ms) <= hello), |p| p + 1);
            let to = entries.partition_point(|e| from_unix_ms(e.id.ms) <= cutoff);
            self.counts.tail_checked += 1;
            if from < to {
                let e = &entries[from];
                self.violate(
                    "in order, no gap, no repeat",
                    cutoff,
                    format!(
                        "{} (open from {} to {}) never got {} ({}'s {:?}, stored at {}) nor the {} after it stored \
                         more than 2 s before it closed",
                        describe(&s),
                        secs(hello),
                        secs(closed_at),
                        e.id,
                        e.user,
                        e.client_id,
                        secs(from_unix_ms(e.id.ms)),
                        to - from - 1
                    ),
                );
            }
        }
    }

    /// Rule 5.
    fn retries(&mut self) {
        for r in &self.journal.retries {
            self.counts.retries += 1;
            match r.status {
                Some(status) if (200..300).contains(&status) => {
                    let s = &self.journal.sessions[r.session];
                    let why = match self.journal.ended(r.session) {
                        Some(end) => format!("ended by {} answered at {}", end.by, secs(end.answered)),
                        None => format!("signed in at {}", secs(s.signed_in)),
                    };
                    self.violate(
                        "refused stays refused",
                        r.sent,
                        format!(
                            "{} of {}'s session #{} (client {}, {why}) was accepted ({status}) at {}",
                            r.what,
                            s.user,
                            r.session,
                            s.client,
                            secs(r.sent)
                        ),
                    );
                }
                Some(_) => self.counts.retries_refused += 1,
                None => {}
            }
        }
    }
}

pub(crate) fn check(
    journal: &Journal,
    histories: &HashMap<String, Vec<Entry>>,
    private: &[String],
    limits: &Limits,
) -> Verdict {
    let mut checker = Checker { journal, limits, violations: Vec::new(), counts: Counts::default() };
    checker.messages(histories);
    let private: HashSet<&str> = private.iter().map(String::as_str).collect();
    for socket in &journal.sockets {
        let s = socket.lock().unwrap();
        match (&s.hello, &s.refused) {
            (Some(_), _) => {
                checker.counts.sockets += 1;
                let how = match &s.closed {
                    Some((_, Closed::Code(code, reason))) => format!("{code} {reason}"),
                    Some((at, Closed::ByClient)) if *at >= limits.load_end => "closed by the client at the end".into(),
                    Some((_, Closed::ByClient)) => "closed by the client".into(),
                    Some((_, Closed::Broken(_))) => "broken (an instance killed or stopped)".into(),
                    None => "never closed".into(),
                };
                *checker.counts.closes.entry(how).or_default() += 1;
            }
            (None, Some(refused)) => {
                let key = if refused.len() > 24 { "no answer" } else { refused.as_str() };
                *checker.counts.refused_upgrades.entry(key.to_owned()).or_default() += 1;
                if refused == "403" && private.contains(s.room.as_str()) {
                    checker.counts.probes_refused += 1;
                }
            }
            _ => {}
        }
        checker.access(&s, &private);
    }
    for i in 0..journal.sessions.len() {
        if let Some(end) = journal.ended(i) {
            *checker.counts.ends.entry(end.by).or_default() += 1;
        }
    }
    checker.retries();
    checker.violations.sort_by_key(|v| v.at);
    Verdict { violations: checker.violations, counts: checker.counts }
}
