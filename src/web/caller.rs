//! Who calls a JSON route that acts for a signed-in user (docs/protocol.md
//! §6, and §7's account routes): one filter, [`caller`], for all of them.
//!
//! Two credentials are taken, the first present winning:
//! - `Authorization: Bearer <access token>` (scripts, palaver-cli): a token
//!   is sent by no browser on its own, so it needs no origin check (the
//!   route table still refuses a foreign `Origin` on unsafe methods).
//! - The session cookie, which a browser attaches to any request to this
//!   site, including one another site makes it send. It is taken only
//!   with proof that this site's page sent the request: an allowed
//!   `Origin`, or on a GET (for which browsers send no `Origin` from the
//!   same origin) `Sec-Fetch-Site: same-origin`, a header only browsers
//!   set and pages cannot forge. A cookie without either is refused with
//!   403, as any unsafe request without its origin is.

use std::sync::Arc;

use tower_sessions::{session::Id, Session};
use warp::{
    http::{header, HeaderMap, HeaderValue, Method},
    Filter, Rejection,
};

use super::filters::with;
use crate::{
    auth::{
        session::{AuthSession, SESSION_COOKIE},
        tokens, Sessions,
    },
    error::Error,
    meters::Meters,
    model::User,
    net::OriginPolicy,
};

/// What [`caller`] checks credentials with.
#[derive(Clone)]
pub struct Callers {
    pub sessions: Sessions,
    pub origins: Arc<OriginPolicy>,
    pub meters: Meters,
}

/// Who calls, and with which session.
#[derive(Clone)]
pub struct Caller {
    pub user: User,
    /// The store id of the session the request came with.
    pub session_id: Id,
    /// The cookie session, when that was the credential (`None`: a Bearer
    /// token's session).
    pub cookie: Option<AuthSession>,
}

/// The signed-in user a request acts for, or its refusal: 401 (no
/// credential, an invalid token, a signed-out cookie), 403 (a cookie
/// without its page's origin), 503 (the store does not answer). A cookie
/// session slides, as on every page.
pub fn caller(callers: Callers) -> impl Filter<Extract = (User,), Error = Rejection> + Clone {
    caller_session(callers).map(|caller: Caller| caller.user)
}

/// [`caller`], with the session the request came with.
pub fn caller_session(callers: Callers) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<Session>())
        .and(with(callers))
        .and_then(|method: Method, headers: HeaderMap, session: Option<Session>, callers: Callers| async move {
            callers.prove(&method, &headers, session).await.map_err(Rejection::from)
        })
}

impl Callers {
    async fn prove(&self, method: &Method, headers: &HeaderMap, session: Option<Session>) -> Result<Caller, Error> {
        if let Some(authorization) = headers.get(header::AUTHORIZATION) {
            return self.bearer(authorization).await;
        }
        let session = session.filter(|_| has_session_cookie(headers)).ok_or(Error::Unauthorized)?;
        if !self.sent_by_this_site(method, headers) {
            tracing::warn!(%method, origin = ?headers.get(header::ORIGIN), "session cookie without its page's origin refused");
            return Err(Error::OriginRequired);
        }
        let cookie = self.sessions.cookie(session);
        let current = self.sessions.refresh(&cookie).await?.ok_or(Error::Unauthorized)?;
        Ok(Caller { user: current.user, session_id: current.session_id, cookie: Some(cookie) })
    }

    /// The caller of an `Authorization: Bearer <access token>` header: 401
    /// `invalid_token` for anything else, 503 when the store does not
    /// answer. Every route that takes a token asks here.
    pub async fn bearer(&self, authorization: &HeaderValue) -> Result<Caller, Error> {
        let token = authorization.to_str().ok().and_then(tokens::bearer).ok_or(Error::InvalidToken)?;
        match self.sessions.authenticate_token(token).await {
            Ok(Ok(current)) => {
                self.meters.token_check("valid");
                Ok(Caller { user: current.user, session_id: current.session_id, cookie: None })
            }
            Ok(Err(err)) => {
                self.meters.token_check("invalid");
                tracing::debug!(%err, "access token refused");
                Err(Error::InvalidToken)
            }
            Err(err) => {
                self.meters.token_check("unavailable");
                Err(err.into())
            }
        }
    }

    /// An allowed `Origin`, or a GET that the browser says is same-origin.
    fn sent_by_this_site(&self, method: &Method, headers: &HeaderMap) -> bool {
        let same_origin =
            headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"same-origin"));
        let allowed_origin = headers.contains_key(header::ORIGIN) && self.origins.check(headers).is_ok();
        allowed_origin || (same_origin && matches!(*method, Method::GET | Method::HEAD))
    }
}

/// Whether the request carries the session cookie.
fn has_session_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|cookie| cookie.trim().split_once('=').is_some_and(|(name, _)| name == SESSION_COOKIE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        assert!(has_session_cookie(&headers(&[("cookie", "a=1; palaver_session=xyz")])));
        assert!(!has_session_cookie(&headers(&[("cookie", "palaver_sessionx=1; b=palaver_session")])));
        assert!(!has_session_cookie(&headers(&[])));
    }
}
