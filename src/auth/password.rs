//! Password hashing with Argon2id, off the async runtime, shared out fairly.
//!
//! Parameters are OWASP's minimum for Argon2id (m = 19 MiB, t = 2, p = 1).
//! Hashing takes tens of milliseconds of CPU, so it runs on threads of its
//! own; on the runtime it would stall every socket served by that worker.
//! A [`Hasher`] has one thread per core, so a burst of logins queues for the
//! CPU rather than multiplying the 19 MiB each hash needs, and the threads
//! run at the lowest scheduling priority: a storm of logins uses the CPU the
//! sockets leave over instead of taking it from their messages (chat p99
//! during a login storm, BENCHMARKS.md).
//!
//! A password check is the one thing anyone can make palaver spend real CPU
//! on without an account, so checks are rationed by client (its address, as
//! the throttles count it), in a [`Queue`]:
//! - a client has at most [`PER_CLIENT`] hashes running; its others wait;
//! - a free thread takes the waiting client that has hashed least lately
//!   (a count that halves every [`HALF_LIFE`], plus what it has running and
//!   waiting): a flood from many addresses gets the CPU everyone else leaves
//!   over, and someone signing in for the first time in a while goes first;
//! - the queue holds no more than can start within [`WAIT_BUDGET`] at the
//!   measured speed of a hash. Beyond that a check is refused at once
//!   ([`Busy`]: 503, retry after a second), unless its client has hashed
//!   less than the heaviest one waiting, whose latest check is refused
//!   instead; a check still waiting when the budget runs out is refused then.
//!
//! Work for no client (a registration's hash, whose attempts the
//! registration throttle already bounds) waits its turn and is never refused.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError,
    },
    time::{Duration, Instant},
};

use metrics::Histogram;
use tokio::sync::oneshot;

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Algorithm, Argon2, Params, Version,
};

use crate::net::address_key;

/// A password as typed; never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(password: String) -> Self {
        Self(password)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

fn hasher() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).expect("OWASP parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A hash of a random password with the same parameters as real ones: an
/// unknown user is verified against it, so that a login for a name that does
/// not exist costs the same time as one with a wrong password.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let random = SaltString::generate(&mut OsRng);
    hash_blocking(&Password(random.as_str().to_owned()))
});

fn hash_blocking(password: &Password) -> String {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.expose().as_bytes(), &salt)
        .expect("hashing with valid parameters cannot fail")
        .to_string()
}

fn verify_blocking(password: &Password, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => hasher().verify_password(password.expose().as_bytes(), &parsed).is_ok(),
        Err(err) => {
            tracing::error!(%err, "stored password hash does not parse");
            false
        }
    }
}

/// The check against the stored hash, or against the dummy hash when there
/// is no such user (and then `false`).
fn check_blocking(password: &Password, stored: Option<&str>) -> bool {
    match stored {
        Some(hash) => verify_blocking(password, hash),
        None => {
            verify_blocking(password, &DUMMY_HASH);
            false
        }
    }
}

/// Hashes one client may have running at once.
const PER_CLIENT: usize = 2;
/// The longest a check waits for a thread before it is refused.
const WAIT_BUDGET: Duration = Duration::from_secs(2);
/// How fast what a client hashed is forgotten.
const HALF_LIFE: Duration = Duration::from_secs(60);
/// What a refused check is told: hashes take milliseconds, so the queue
/// has moved on within a second.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a hash is taken to last until one has been measured.
const FIRST_GUESS: Duration = Duration::from_millis(50);

/// The password could not be checked in time: nothing was verified, try
/// again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub retry_after: Duration,
}

/// Whom a hash is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Asker {
    /// A client, by its address as the throttles count it (IPv6 per /64).
    Client(String),
    /// No client in particular: waits its turn, never refused.
    Anyone,
}

/// How hashing is shared out.
#[derive(Debug, Clone, Copy)]
struct Policy {
    threads: usize,
    per_client: usize,
    wait_budget: Duration,
    half_life: Duration,
}

impl Policy {
    fn new(threads: usize) -> Self {
        Self { threads, per_client: PER_CLIENT, wait_budget: WAIT_BUDGET, half_life: HALF_LIFE }
    }
}

/// One asker's share: what it has running and waiting, and how much it
/// hashed lately (`lately` as of `at`, halving every half-life).
#[derive(Debug)]
struct Share {
    running: usize,
    waiting: usize,
    lately: f64,
    at: Instant,
}

impl Share {
    fn lately(&self, now: Instant, half_life: Duration) -> f64 {
        let halvings = now.saturating_duration_since(self.at).as_secs_f64() / half_life.as_secs_f64();
        self.lately * 0.5f64.powf(halvings)
    }

    /// Lower goes first.
    fn weight(&self, now: Instant, half_life: Duration) -> f64 {
        self.lately(now, half_life) + (self.running + self.waiting) as f64
    }

    fn idle(&self, now: Instant, half_life: Duration) -> bool {
        self.running == 0 && self.waiting == 0 && self.lately(now, half_life) < 0.01
    }
}

/// A request waiting for a thread.
struct Waiting<T> {
    asker: Asker,
    since: Instant,
    work: T,
}

/// The queue's decisions, over an explicit clock and any kind of work `T`.
struct Queue<T> {
    policy: Policy,
    /// Waiting requests by arrival number.
    waiting: BTreeMap<u64, Waiting<T>>,
    next: u64,
    shares: HashMap<Asker, Share>,
    /// The number of shares after the last sweep of idle ones.
    swept: usize,
    running: usize,
    /// How long a hash takes (a moving average of measured ones).
    hash_time: Duration,
}

/// What the queue answers a request.
#[derive(Debug, PartialEq, Eq)]
enum Admitted<T> {
    /// Queued as this number; the work of a heavier client's latest request
    /// may have been refused to make room.
    Queued(u64, Option<T>),
    /// No room: refused at once.
    Refused(T),
}

impl<T> Queue<T> {
    fn new(policy: Policy) -> Self {
        Self {
            policy,
            waiting: BTreeMap::new(),
            next: 0,
            shares: HashMap::new(),
            swept: 0,
            running: 0,
            hash_time: FIRST_GUESS,
        }
    }

    /// How many requests may wait: as many as can start within the budget.
    fn room(&self) -> usize {
        let starts = self.policy.wait_budget.as_secs_f64() / self.hash_time.as_secs_f64().max(1e-6);
        ((starts * self.policy.threads as f64) as usize).max(self.policy.threads)
    }

    fn weight(&self, asker: &Asker, now: Instant) -> f64 {
        self.shares.get(asker).map_or(0.0, |share| share.weight(now, self.policy.half_life))
    }

    fn admit(&mut self, asker: Asker, work: T, now: Instant) -> Admitted<T> {
        let mut made_room = None;
        if self.waiting.len() >= self.room() && asker != Asker::Anyone {
            // The heaviest client waiting, and its latest request.
            let heaviest = self
                .waiting
                .iter()
                .filter(|(_, w)| w.asker != Asker::Anyone)
                .map(|(n, w)| (self.weight(&w.asker, now), *n))
                .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            match heaviest {
                // Lighter even with this request counted: it takes that place.
                Some((weight, n)) if self.weight(&asker, now) + 1.0 < weight => {
                    made_room = self.cancel(n);
                }
                _ => return Admitted::Refused(work),
            }
        }
        let n = self.next;
        self.next += 1;
        self.share(&asker, now).waiting += 1;
        self.waiting.insert(n, Waiting { asker, since: now, work });
        Admitted::Queued(n, made_room)
    }

    fn share(&mut self, asker: &Asker, now: Instant) -> &mut Share {
        self.shares.entry(asker.clone()).or_insert(Share { running: 0, waiting: 0, lately: 0.0, at: now })
    }

    /// The request a free thread takes now, if any may start: the one of the
    /// lightest client below its limit (the earliest on a tie), with how long
    /// it waited.
    fn start(&mut self, now: Instant) -> Option<(Asker, T, Duration)> {
        if self.running >= self.policy.threads {
            return None;
        }
        let (half_life, per_client) = (self.policy.half_life, self.policy.per_client);
        let shares = &self.shares;
        let n = self
            .waiting
            .iter()
            .filter_map(|(n, w)| {
                let share = &shares[&w.asker];
                (share.running < per_client).then(|| (share.weight(now, half_life), *n))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))?
            .1;
        let Waiting { asker, since, work } = self.waiting.remove(&n).expect("just found");
        let share = self.share(&asker, now);
        share.lately = share.lately(now, half_life) + 1.0;
        share.at = now;
        share.waiting -= 1;
        share.running += 1;
        self.running += 1;
        Some((asker, work, now.saturating_duration_since(since)))
    }

    /// A hash for `asker` took `took`.
    fn finish(&mut self, asker: &Asker, took: Duration, now: Instant) {
        self.running -= 1;
        self.share(asker, now).running -= 1;
        self.hash_time = (self.hash_time * 4 + took) / 5;
        // Forget clients that hashed long enough ago, now and then.
        if self.shares.len() > 2 * self.swept + 64 {
            let half_life = self.policy.half_life;
            self.shares.retain(|_, share| !share.idle(now, half_life));
            self.swept = self.shares.len();
        }
    }

    /// Takes request `n` out of the queue if it has not started.
    fn cancel(&mut self, n: u64) -> Option<T> {
        let waiting = self.waiting.remove(&n)?;
        if let Some(share) = self.shares.get_mut(&waiting.asker) {
            share.waiting -= 1;
        }
        Some(waiting.work)
    }
}

/// Work for a hashing thread; it is told how long it waited.
type Job = Box<dyn FnOnce(Duration) + Send>;

/// A queue and the threads that serve it.
struct Pool {
    queue: Mutex<Queue<Job>>,
    /// Signalled when work arrives, a hash ends, or the pool closes.
    changed: Condvar,
    /// Set (under the queue's lock, so no waiting thread misses it) when
    /// the last [`Hasher`] goes.
    closed: AtomicBool,
    started: OnceLock<()>,
    /// Refusals since the last warning, and when that was.
    refusals: Mutex<(u64, Option<Instant>)>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Queue<Job>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One hashing thread: takes what the queue gives it until the pool
    /// closes.
    fn serve(&self) {
        lowest_priority();
        loop {
            let (asker, job, waited) = {
                let mut queue = self.lock();
                loop {
                    if self.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(next) = queue.start(Instant::now()) {
                        break next;
                    }
                    queue = self.changed.wait(queue).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let began = Instant::now();
            // A panicking job fails its own request, not the thread.
            drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || job(waited))));
            self.lock().finish(&asker, began.elapsed(), Instant::now());
            self.changed.notify_all();
        }
    }

    /// Logs refusals at most once a second, with how many there were.
    fn refused(&self, queue_room: usize) {
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        refusals.0 += 1;
        let now = Instant::now();
        if refusals.1.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            tracing::warn!(
                refused = refusals.0,
                room = queue_room,
                "password checks refused: more waiting than can start within {WAIT_BUDGET:?} (503, retry after 1 s)"
            );
            *refusals = (0, Some(now));
        }
    }
}

/// Password hashing for one instance: its threads and the queue that shares
/// them out (see the module's documentation). Clones share them; the
/// threads end when the last clone is dropped.
#[derive(Clone)]
pub struct Hasher {
    pool: Arc<Pool>,
    _owner: Arc<Owner>,
}

/// Closes the pool when the last [`Hasher`] goes.
struct Owner(Arc<Pool>);

impl Drop for Owner {
    fn drop(&mut self) {
        let queue = self.0.lock();
        self.0.closed.store(true, Ordering::SeqCst);
        drop(queue);
        self.0.changed.notify_all();
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    /// One thread per core, started with the first hash.
    pub fn new() -> Self {
        Self::with_policy(Policy::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    fn with_policy(policy: Policy) -> Self {
        let pool = Arc::new(Pool {
            queue: Mutex::new(Queue::new(policy)),
            changed: Condvar::new(),
            closed: AtomicBool::new(false),
            started: OnceLock::new(),
            refusals: Mutex::new((0, None)),
        });
        Self { _owner: Arc::new(Owner(pool.clone())), pool }
    }

    fn start_threads(&self) {
        self.pool.started.get_or_init(|| {
            for n in 0..self.pool.lock().policy.threads {
                let pool = self.pool.clone();
                std::thread::Builder::new()
                    .name(format!("password-hash-{n}"))
                    .spawn(move || pool.serve())
                    .expect("a hashing thread starts");
            }
        });
    }

    /// Runs `work` for `asker` when the queue says so; `waited` records how
    /// long it waited. A client's request is refused ([`Busy`]) when there
    /// is no room for it, when a lighter client takes its place, or when
    /// it has not started within the budget.
    async fn run<T: Send + 'static>(
        &self,
        asker: Asker,
        work: impl FnOnce() -> T + Send + 'static,
        waited: &Histogram,
    ) -> Result<T, Busy> {
        self.start_threads();
        let (done, mut result) = oneshot::channel();
        let job: Job = Box::new(move |wait| {
            let _ = done.send((wait, work()));
        });
        let client = asker != Asker::Anyone;
        let (n, budget) = {
            let mut queue = self.pool.lock();
            let room = queue.room();
            match queue.admit(asker, job, Instant::now()) {
                Admitted::Queued(n, made_room) => {
                    if made_room.is_some() {
                        self.pool.refused(room);
                    }
                    (n, queue.policy.wait_budget)
                }
                Admitted::Refused(_) => {
                    drop(queue);
                    self.pool.refused(room);
                    return Err(Busy { retry_after: RETRY_AFTER });
                }
            }
        };
        self.pool.changed.notify_all();
        let outcome = if client {
            match tokio::time::timeout(budget, &mut result).await {
                Ok(outcome) => outcome.ok(),
                // Refused only if it has not started; if it has, it ends soon.
                Err(_) => {
                    let cancelled = self.pool.lock().cancel(n);
                    match cancelled {
                        Some(_) => None,
                        None => result.await.ok(),
                    }
                }
            }
        } else {
            result.await.ok()
        };
        match outcome {
            Some((wait, value)) => {
                waited.record(wait);
                Ok(value)
            }
            // Its place went to a lighter client, or its time ran out.
            None => Err(Busy { retry_after: RETRY_AFTER }),
        }
    }

    /// Checks a password for the client at `client` against the stored hash,
    /// or against the dummy hash when there is no such user (and then
    /// answers `false`); or refuses to, when the queue is full.
    pub async fn verify(
        &self,
        client: IpAddr,
        password: Password,
        stored: Option<String>,
        waited: &Histogram,
    ) -> Result<bool, Busy> {
        let check = move || check_blocking(&password, stored.as_deref());
        self.run(Asker::Client(address_key(client)), check, waited).await
    }

    /// Runs other CPU work a client can ask for without an account (a new
    /// password's strength estimate), rationed like its password checks.
    pub(crate) async fn for_client<T: Send + 'static>(
        &self,
        client: IpAddr,
        work: impl FnOnce() -> T + Send + 'static,
        waited: &Histogram,
    ) -> Result<T, Busy> {
        self.run(Asker::Client(address_key(client)), work, waited).await
    }

    /// Hashes a new password into a PHC string (waits its turn, never refused).
    pub async fn hash(&self, password: Password, waited: &Histogram) -> String {
        self.run(Asker::Anyone, move || hash_blocking(&password), waited).await.expect("work for anyone is not refused")
    }
}

/// The hasher of tools and tests that have no instance (an instance has its own).
static TOOLS: LazyLock<Hasher> = LazyLock::new(Hasher::new);

/// Hashes a new password into a PHC string, for tools (an instance uses its
/// [`Hasher`]).
pub async fn hash(password: Password, waited: &Histogram) -> String {
    TOOLS.hash(password, waited).await
}

/// Checks a password against the stored hash, or against the dummy hash
/// when there is none (then `false`), for tools (an instance uses its
/// [`Hasher`]).
pub async fn verify(password: Password, stored: Option<String>, waited: &Histogram) -> bool {
    let check = move || check_blocking(&password, stored.as_deref());
    TOOLS.run(Asker::Anyone, check, waited).await.expect("work for anyone is not refused")
}

/// Lowers the calling thread to nice 19. On Linux a nice value is per thread
/// (`setpriority` with the thread id); raising it needs no privilege.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority only reads its
        // arguments, and a failure is reported through the return value.
        let result = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
        };
        if result != 0 {
            tracing::warn!(err = %std::io::Error::last_os_error(), "password hashing runs at normal priority");
        }
    }
}

/// Computes the dummy hash now, so the first unknown-user login is not slower.
pub(crate) async fn warm_up() {
    let warm = || LazyLock::force(&DUMMY_HASH).len();
    tokio::task::spawn_blocking(warm).await.expect("argon2 does not panic");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hasher = Hasher::new();
        let hash = hasher.hash(Password::new("correct horse".into()), &Histogram::noop()).await;
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let noop = Histogram::noop();
        let verify =
            |password: &str, stored: Option<String>| hasher.verify(ip, Password::new(password.into()), stored, &noop);
        assert_eq!(verify("correct horse", Some(hash.clone())).await, Ok(true));
        assert_eq!(verify("wrong horse", Some(hash)).await, Ok(false));
        assert_eq!(verify("anything", None).await, Ok(false));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_off_the_runtime_at_the_lowest_priority() {
        let (name, nice) = Hasher::new()
            .run(
                Asker::Anyone,
                || {
                    // SAFETY: as in `lowest_priority`.
                    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
                    (std::thread::current().name().map(str::to_owned), nice)
                },
                &Histogram::noop(),
            )
            .await
            .unwrap();
        assert!(name.as_deref().is_some_and(|n| n.starts_with("password-hash-")), "{name:?}");
        assert_eq!(nice, 19);
    }

    #[test]
    fn passwords_do_not_print() {
        assert_eq!(format!("{:?}", Password::new("hunter22".into())), "Password([redacted])");
    }

    // The queue's policy, on an explicit clock.

    fn client(name: &str) -> Asker {
        Asker::Client(name.into())
    }

    /// Two threads, two per client, a 1 s budget, a 60 s half-life.
    fn queue() -> Queue<&'static str> {
        let policy = Policy { threads: 2, per_client: 2, wait_budget: Duration::from_secs(1), half_life: HALF_LIFE };
        let mut queue = Queue::new(policy);
        queue.hash_time = Duration::from_millis(100);
        queue
    }

    fn queued<T>(admitted: Admitted<T>) -> u64 {
        match admitted {
            Admitted::Queued(n, None) => n,
            Admitted::Queued(_, Some(_)) => panic!("queued by refusing another"),
            Admitted::Refused(_) => panic!("refused"),
        }
    }

    /// Starts what may start, and returns the work in the order taken.
    fn start_all(queue: &mut Queue<&'static str>, now: Instant) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.start(now).map(|(_, work, _)| work)).collect()
    }

    #[test]
    fn a_client_that_has_not_hashed_lately_goes_before_those_that_have() {
        let t0 = Instant::now();
        let mut queue = queue();
        for work in ["flood 1", "flood 2", "flood 3"] {
            queued(queue.admit(client("flood"), work, t0));
        }
        assert_eq!(start_all(&mut queue, t0), ["flood 1", "flood 2"]);
        queue.finish(&client("flood"), Duration::from_millis(100), t0);
        queued(queue.admit(client("flood"), "flood 4", t0));
        queued(queue.admit(client("newcomer"), "newcomer", t0));
        // The flood has hashed twice lately and has two waiting; the newcomer
        // came last and goes first.
        assert_eq!(start_all(&mut queue, t0), ["newcomer"]);
        queue.finish(&client("flood"), Duration::from_millis(100), t0);
        assert_eq!(start_all(&mut queue, t0), ["flood 3"]);
    }

    #[test]
    fn no_client_has_more_than_its_two_hashes_running_and_its_others_wait_their_turn() {
        let t0 = Instant::now();
        let policy = Policy { threads: 4, ..queue().policy };
        let mut queue = Queue::new(policy);
        for work in ["a1", "a2", "a3", "a4"] {
            queued(queue.admit(client("a"), work, t0));
        }
        assert_eq!(start_all(&mut queue, t0), ["a1", "a2"], "two threads stay free");
        queued(queue.admit(client("b"), "b1", t0));
        assert_eq!(start_all(&mut queue, t0), ["b1"]);
        queue.finish(&client("a"), Duration::from_millis(100), t0);
        assert_eq!(start_all(&mut queue, t0), ["a3"], "in the order they came");
    }

    #[test]
    fn the_queue_holds_what_can_start_within_the_budget_at_the_measured_speed() {
        let t0 = Instant::now();
        let mut queue = queue();
        // 100 ms a hash, two threads, 1 s: twenty.
        assert_eq!(queue.room(), 20);
        for i in 0..20 {
            queued(queue.admit(client(&format!("c{i}")), "work", t0));
        }
        // Heavier than those waiting, or like them: refused at once.
        assert_eq!(queue.admit(client("c0"), "one more", t0), Admitted::Refused("one more"));
        assert_eq!(queue.admit(client("c20"), "a first", t0), Admitted::Refused("a first"));
        // Hashes measured slower: less room, so no one waits longer.
        for _ in 0..2 {
            queue.start(t0).unwrap();
        }
        for i in 0..2 {
            queue.finish(&client(&format!("c{i}")), Duration::from_millis(600), t0);
        }
        assert!(queue.room() < 10, "room {} at {:?} a hash", queue.room(), queue.hash_time);
    }

    #[test]
    fn a_full_queue_makes_room_for_a_client_lighter_than_the_heaviest_waiting() {
        let t0 = Instant::now();
        let mut queue = queue();
        let flood: Vec<Asker> = (0..10).map(|i| client(&format!("flood{i}"))).collect();
        // Each flood client has hashed once, and has two waiting.
        for asker in &flood {
            queued(queue.admit(asker.clone(), "first", t0));
            let (asker, _, _) = queue.start(t0).unwrap();
            queue.finish(&asker, Duration::from_millis(100), t0);
        }
        for asker in flood.iter().chain(&flood) {
            queued(queue.admit(asker.clone(), "flood", t0));
        }
        assert_eq!(queue.waiting.len(), queue.room());
        assert_eq!(queue.admit(flood[0].clone(), "third", t0), Admitted::Refused("third"));

        // Nothing lately, nothing waiting: it takes the place of the latest
        // request of the heaviest (all weigh three: the latest of all).
        let latest = *queue.waiting.keys().last().unwrap();
        let Admitted::Queued(_, Some("flood")) = queue.admit(client("newcomer"), "newcomer", t0) else {
            panic!("the newcomer is queued in a flood request's place");
        };
        assert!(!queue.waiting.contains_key(&latest), "the latest flood request went");
        assert_eq!(queue.shares[&flood[9]].waiting, 1);
        assert_eq!(queue.waiting.len(), queue.room());
        // And it starts first.
        assert_eq!(start_all(&mut queue, t0)[0], "newcomer");
    }

    #[test]
    fn what_a_client_hashed_counts_half_after_the_half_life() {
        let t0 = Instant::now();
        let mut queue = queue();
        for _ in 0..4 {
            queued(queue.admit(client("a"), "a", t0));
            queue.start(t0).unwrap();
            queue.finish(&client("a"), Duration::from_millis(100), t0);
        }
        let share = &queue.shares[&client("a")];
        assert_eq!(share.weight(t0, HALF_LIFE), 4.0);
        assert!((share.weight(t0 + HALF_LIFE, HALF_LIFE) - 2.0).abs() < 1e-9);
        assert!(share.idle(t0 + HALF_LIFE * 10, HALF_LIFE), "forgotten after ten half-lives");
    }

    #[test]
    fn work_for_no_client_is_never_refused_nor_made_room_from() {
        let t0 = Instant::now();
        let mut queue = queue();
        for _ in 0..25 {
            queued(queue.admit(Asker::Anyone, "registration", t0));
        }
        assert!(queue.waiting.len() > queue.room());
        assert_eq!(queue.admit(client("newcomer"), "login", t0), Admitted::Refused("login"));
    }

    #[test]
    fn a_cancelled_request_leaves_the_queue_and_a_started_one_cannot_be() {
        let t0 = Instant::now();
        let mut queue = queue();
        let first = queued(queue.admit(client("a"), "first", t0));
        let second = queued(queue.admit(client("a"), "second", t0));
        assert_eq!(queue.start(t0).map(|(_, work, _)| work), Some("first"));
        assert_eq!(queue.cancel(first), None, "running");
        assert_eq!(queue.cancel(second), Some("second"));
        assert_eq!(queue.shares[&client("a")].waiting, 0);
        assert_eq!(queue.start(t0).map(|(_, work, _)| work), None);
    }

    #[tokio::test]
    async fn a_check_that_cannot_start_within_the_budget_is_told_to_retry_then() {
        let policy =
            Policy { threads: 1, per_client: 2, wait_budget: Duration::from_millis(200), half_life: HALF_LIFE };
        let hasher = Hasher::with_policy(policy);
        // The one thread is held until the check has been refused.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, holds) = oneshot::channel();
        let holder = hasher.clone();
        let holding = tokio::spawn(async move {
            let hold = move || {
                let _ = started.send(());
                held.recv().ok()
            };
            holder.run(Asker::Anyone, hold, &Histogram::noop()).await
        });
        holds.await.unwrap();
        let asked = Instant::now();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let refused = hasher.verify(ip, Password::new("pw".into()), None, &Histogram::noop()).await;
        let took = asked.elapsed();
        assert_eq!(refused, Err(Busy { retry_after: Duration::from_secs(1) }));
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "after {took:?}");
        release.send(()).unwrap();
        assert_eq!(holding.await.unwrap(), Ok(Some(())));
        assert!(hasher.pool.lock().waiting.is_empty());
    }
}
