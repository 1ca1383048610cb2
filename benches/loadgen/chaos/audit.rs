//! The auditor: tries again, now and then and once more at the end, the
//! credentials of sessions that certainly ended (a logged-out cookie, the
//! access and refresh tokens of an ended token session, a cookie past its
//! absolute lifetime). Each must still be refused.

use std::{sync::Arc, time::Duration};

use crate::chaos::{
    client::{Phase, World},
    journal::{now, Credential, Ms, Retry},
    rng::Rng,
    web::{self, Failure},
};

/// The sessions whose credentials must be refused by now: ended by a
/// request answered at least a second ago, or past their absolute lifetime.
fn refused_by_now(world: &World, session_max: Ms) -> Vec<usize> {
    let journal = world.journal.lock().unwrap();
    let at = now();
    (0..journal.sessions.len())
        .filter(|&i| {
            journal.ended(i).is_some_and(|end| end.answered + 1_000 < at)
                || journal.sessions[i].signed_in + session_max + 2_000 < at
        })
        .collect()
}

/// Tries one credential of `session`; records the answer.
async fn retry(world: &World, rng: &mut Rng, session: usize) {
    let (credential, cookie, access, refresh) = {
        let journal = world.journal.lock().unwrap();
        let s = &journal.sessions[session];
        (s.credential, s.cookie.clone(), s.access_tokens.last().cloned(), s.refresh_tokens.last().cloned())
    };
    let port = *rng.pick(&world.ports);
    let sent = now();
    let (what, answer) = match credential {
        Credential::Cookie => {
            let cookie = format!("Cookie: {}", cookie.unwrap());
            ("its cookie on POST /session/refresh", web::request(port, "POST", "/session/refresh", &[cookie], "").await)
        }
        Credential::Token if rng.chance(0.5) => {
            let bearer = format!("Authorization: Bearer {}", access.unwrap());
            (
                "its last access token on POST /api/ws-ticket",
                web::request(port, "POST", "/api/ws-ticket", &[bearer], "").await,
            )
        }
        Credential::Token => {
            let body = serde_json::json!({"refresh_token": refresh.unwrap()}).to_string();
            let headers = ["Content-Type: application/json".to_owned()];
            ("its last refresh token", web::request(port, "POST", "/api/token/refresh", &headers, &body).await)
        }
    };
    let status = match answer {
        // A store that does not answer decides nothing: inconclusive.
        Ok(r) if r.status == 503 => None,
        Ok(r) => Some(r.status),
        Err(Failure::Refused | Failure::Unknown(_)) => None,
    };
    world.journal.lock().unwrap().retries.push(Retry { session, what, sent, status });
}

/// Every 1 to 2 s while the workload runs, one ended session's credential.
pub(crate) async fn audit(world: Arc<World>, mut rng: Rng, session_max: Ms) {
    while world.phase() == Phase::Run {
        tokio::time::sleep(Duration::from_millis(rng.between(1_000, 2_000))).await;
        let ended = refused_by_now(&world, session_max);
        if !ended.is_empty() {
            let session = *rng.pick(&ended);
            retry(&world, &mut rng, session).await;
        }
    }
}

/// At the end: every ended session's, once.
pub(crate) async fn audit_all(world: &World, rng: &mut Rng, session_max: Ms) -> usize {
    let ended = refused_by_now(world, session_max);
    for &session in &ended {
        retry(world, rng, session).await;
    }
    ended.len()
}
