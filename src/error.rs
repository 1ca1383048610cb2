//! The application's error type and how each error is shown.
//!
//! Causes are logged; users see a status and a plain sentence, never the
//! internals.

use warp::http::StatusCode;

use crate::backend::StoreError;

/// What every surface says of a room the user may not see, and of a name
/// that is no room (docs/protocol.md §6).
pub const NO_SUCH_ROOM: &str = "No such room, or you are not a member.";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared store did not answer: fail closed.
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("not signed in")]
    Unauthorized,
    /// A room that does not exist, or that the user may not see: one
    /// answer for both, so that it says nothing of the room.
    #[error("no such room, or not a member")]
    NoSuchRoom,
    /// An `Authorization` header that is not a valid access token.
    #[error("invalid access token")]
    InvalidToken,
    /// The session cookie without the page's `Origin` (or, on a GET,
    /// `Sec-Fetch-Site: same-origin`): what a browser sends to a route it
    /// was led to by another site.
    #[error("cookie without an allowed origin")]
    OriginRequired,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A body of a type the route does not read: the sentence says which it reads.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(&'static str),
    #[error("page rendering failed: {0}")]
    Render(#[from] askama::Error),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Store(StoreError::Corrupt(_)) | Error::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::NoSuchRoom => StatusCode::NOT_FOUND,
            Error::InvalidToken => StatusCode::UNAUTHORIZED,
            Error::OriginRequired => StatusCode::FORBIDDEN,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// A short machine-readable name, for the JSON API's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Store(StoreError::Corrupt(_)) | Error::Render(_) => "internal",
            Error::Store(_) => "unavailable",
            Error::Unauthorized => "unauthorized",
            Error::NoSuchRoom => "not_found",
            Error::InvalidToken => "invalid_token",
            Error::OriginRequired => "origin_required",
            Error::BadRequest(_) => "invalid_request",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
        }
    }

    /// A sentence safe to show to the user.
    pub fn public_message(&self) -> &'static str {
        match self {
            Error::Store(StoreError::Corrupt(_)) | Error::Render(_) => "Something went wrong on our side.",
            Error::Store(_) => "palaver cannot reach its store right now. Please try again in a moment.",
            Error::Unauthorized => "Please sign in.",
            Error::NoSuchRoom => NO_SUCH_ROOM,
            Error::InvalidToken => "Send a valid access token: Authorization: Bearer <token>.",
            Error::OriginRequired => {
                "The session cookie is accepted here only from this site's pages; other clients send a Bearer token."
            }
            Error::BadRequest(why) | Error::UnsupportedMediaType(why) => why,
        }
    }

    /// Logs the cause at a level matching its seriousness.
    pub fn log(&self) {
        match self.status() {
            s if s.is_server_error() => tracing::error!(error = %self, "request failed"),
            _ => tracing::debug!(error = %self, "request refused"),
        }
    }
}

/// warp turns any `Reject` into a `Rejection`, so `?` works in handlers.
impl warp::reject::Reject for Error {}
