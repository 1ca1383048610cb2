//! The application's error type and how each error is shown.
//!
//! Causes are logged; users see a status and a plain sentence, never the
//! internals.

use warp::http::StatusCode;

use crate::backend::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared store did not answer: fail closed.
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("not signed in")]
    Unauthorized,
    #[error("not found")]
    NotFound,
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
            Error::NotFound => StatusCode::NOT_FOUND,
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
            Error::NotFound => "not_found",
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
            Error::NotFound => "There is nothing here.",
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
