//! Whether a new password is worth having (docs/protocol.md §2.2): the
//! zxcvbn estimator's score, 0 to 4, must be at least [`MIN_SCORE`], and a
//! password refused comes with the estimator's advice.
//!
//! The estimate reads the first [`ESTIMATED_CHARS`] characters: its time
//! grows steeply with length (measured: 100 random punctuation characters
//! took 0.3 s optimized, 5 s unoptimized; 64 of them, 27 ms), and 64
//! characters that score well are a password worth having whatever
//! follows. It runs on the password-hashing threads, shared out by client
//! like a password check (see [`Hasher::estimate`](super::password::Hasher)).

use zxcvbn::Score;

/// The lowest score accepted: "safely unguessable: moderate protection
/// from offline slow-hash scenario".
pub const MIN_SCORE: Score = Score::Three;

/// How much of a password is estimated.
pub const ESTIMATED_CHARS: usize = 64;

/// What to tell someone whose password would be guessed: the estimator's
/// warning and suggestions, as sentences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weak {
    pub advice: String,
}

/// Judges `password` for the account `username` (whose name, and
/// palaver's, make a password weaker).
pub fn judge(password: &str, username: &str) -> Result<(), Weak> {
    let end = password.char_indices().nth(ESTIMATED_CHARS).map_or(password.len(), |(at, _)| at);
    let estimate = zxcvbn::zxcvbn(&password[..end], &[username, "palaver"]);
    if estimate.score() >= MIN_SCORE {
        return Ok(());
    }
    let mut advice: Vec<String> = Vec::new();
    if let Some(feedback) = estimate.feedback() {
        advice.extend(feedback.warning().map(|w| w.to_string()));
        advice.extend(feedback.suggestions().iter().map(ToString::to_string));
    }
    if advice.is_empty() {
        advice.push("Add another word or two. Uncommon words are better.".to_owned());
    }
    Err(Weak { advice: format!("This password is easy to guess. {}", advice.join(" ")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guessable_passwords_are_refused_with_advice_and_good_ones_pass() {
        for weak in ["password", "        ", "12345678", "alice2024", "palaver1"] {
            let refused = judge(weak, "alice").expect_err(weak);
            assert!(refused.advice.starts_with("This password is easy to guess. "), "{weak}: {}", refused.advice);
            assert!(refused.advice.len() > "This password is easy to guess. ".len(), "{weak}: advice given");
        }
        let top = judge("password", "alice").unwrap_err();
        assert!(top.advice.contains("top-10 common password"), "{}", top.advice);
        for good in ["correct horse battery", "Tr0ub4dor&3-xylophone", "wrong password"] {
            assert_eq!(judge(good, "alice"), Ok(()), "{good}");
        }
    }

    #[test]
    fn only_the_first_64_characters_are_estimated() {
        let long: String = (0..256).map(|i| char::from(b'!' + (i * 7 % 90) as u8)).collect();
        let started = std::time::Instant::now();
        assert_eq!(judge(&long, "alice"), Ok(()));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        let weak_start = format!("{}{}", "a".repeat(64), "Tr0ub4dor&3-xylophone");
        assert!(judge(&weak_start, "alice").is_err(), "what follows the first 64 is not read");
    }
}
