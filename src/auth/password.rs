//! Password hashing with Argon2id, off the async runtime.
//!
//! Parameters are OWASP's minimum for Argon2id (m = 19 MiB, t = 2, p = 1).
//! Hashing takes tens of milliseconds of CPU, so it runs on the blocking pool;
//! on the runtime it would stall every socket served by that worker thread.
//! At most one hash per core runs at a time: each needs 19 MiB, and a burst
//! of logins must queue for the CPU rather than multiply that memory.

use std::{fmt, sync::LazyLock};

use metrics::Histogram;
use tokio::sync::Semaphore;

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

/// Hashes or verifications running at once.
static SLOTS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())));

/// Runs `work` on the blocking pool once a slot is free; `waited` records
/// how long that took.
async fn bounded<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static, waited: &Histogram) -> T {
    let queued = std::time::Instant::now();
    let _slot = SLOTS.acquire().await.expect("the semaphore is never closed");
    waited.record(queued.elapsed());
    tokio::task::spawn_blocking(work).await.expect("argon2 does not panic")
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
pub async fn warm_up() {
    tokio::task::spawn_blocking(|| LazyLock::force(&DUMMY_HASH)).await.expect("hashing does not panic");
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

    #[test]
    fn passwords_do_not_print() {
        assert_eq!(format!("{:?}", Password::new("hunter22".into())), "Password([redacted])");
    }
}
