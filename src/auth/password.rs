//! Password hashing with Argon2id, off the async runtime.
//!
//! Parameters are OWASP's minimum for Argon2id (m = 19 MiB, t = 2, p = 1).
//! Hashing takes tens of milliseconds of CPU, so it runs on threads of its
//! own; on the runtime it would stall every socket served by that worker.
//! There is one hashing thread per core, so a burst of logins queues for the
//! CPU rather than multiplying the 19 MiB each hash needs, and the threads
//! run at the lowest scheduling priority: a storm of logins uses the CPU the
//! sockets leave over instead of taking it from their messages (chat p99
//! during a login storm, BENCHMARKS.md).

use std::{
    fmt,
    sync::{mpsc, LazyLock, Mutex},
};

use metrics::Histogram;
use tokio::sync::oneshot;

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Algorithm, Argon2, Params, Version,
};

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

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads' queue; they start with the first hash.
static POOL: LazyLock<mpsc::Sender<Job>> = LazyLock::new(|| {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = std::sync::Arc::new(Mutex::new(queue));
    for n in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name(format!("password-hash-{n}"))
            .spawn(move || {
                lowest_priority();
                loop {
                    // The lock is held while waiting, so one idle thread waits
                    // on the queue and the others wait on the lock.
                    let job = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
                    match job {
                        // A panicking job fails its own request, not the thread.
                        Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))),
                        Err(mpsc::RecvError) => return,
                    }
                }
            })
            .expect("a hashing thread starts");
    }
    jobs
});

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

/// Runs `work` on a hashing thread, after the hashes queued before it;
/// `waited` records how long it queued.
async fn bounded<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static, waited: &Histogram) -> T {
    let (done, result) = oneshot::channel();
    let queued = std::time::Instant::now();
    let job: Job = Box::new(move || {
        let wait = queued.elapsed();
        let _ = done.send((wait, work()));
    });
    POOL.send(job).expect("the hashing threads never stop");
    let (wait, value) = result.await.expect("argon2 does not panic");
    waited.record(wait);
    value
}

/// Hashes a new password into a PHC string.
pub async fn hash(password: Password, waited: &Histogram) -> String {
    bounded(move || hash_blocking(&password), waited).await
}

/// Checks a password against the stored hash, or against the dummy hash
/// when there is no such user (and then answers `false`).
pub async fn verify(password: Password, stored: Option<String>, waited: &Histogram) -> bool {
    let check = move || match stored {
        Some(hash) => verify_blocking(&password, &hash),
        None => {
            verify_blocking(&password, &DUMMY_HASH);
            false
        }
    };
    bounded(check, waited).await
}

/// Computes the dummy hash now, so the first unknown-user login is not slower.
pub(crate) async fn warm_up() {
    let warm = || {
        LazyLock::force(&DUMMY_HASH);
    };
    bounded(warm, &Histogram::noop()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hash = hash(Password::new("correct horse".into()), &Histogram::noop()).await;
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(verify(Password::new("correct horse".into()), Some(hash.clone()), &Histogram::noop()).await);
        assert!(!verify(Password::new("wrong horse".into()), Some(hash), &Histogram::noop()).await);
        assert!(!verify(Password::new("anything".into()), None, &Histogram::noop()).await);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_off_the_runtime_at_the_lowest_priority() {
        let (name, nice) = bounded(
            || {
                // SAFETY: as in `lowest_priority`.
                let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
                (std::thread::current().name().map(str::to_owned), nice)
            },
            &Histogram::noop(),
        )
        .await;
        assert!(name.as_deref().is_some_and(|n| n.starts_with("password-hash-")), "{name:?}");
        assert_eq!(nice, 19);
    }

    #[test]
    fn passwords_do_not_print() {
        assert_eq!(format!("{:?}", Password::new("hunter22".into())), "Password([redacted])");
    }
}
