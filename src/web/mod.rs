//! The HTTP surface: the route table, the filters handlers share, security
//! headers, and the one place rejections become responses.

pub mod account;
pub mod account_api;
pub mod account_page;
pub mod api;
pub mod assets;
pub mod caller;
pub mod filters;
pub mod history;
pub mod pages;
pub mod rooms;
pub mod router;
pub mod signup;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use warp::{http::StatusCode, reply::Response, Filter, Rejection, Reply};

use self::{
    account::Accounts,
    assets::Assets,
    filters::with,
    pages::RoomPages,
    router::{json_api, web, Handler, Router},
};
use crate::{
    auth::Sessions,
    backend::{BackendKind, Health},
    net::OriginPolicy,
    realtime::upgrade::Upgrader,
};

/// What the route table is wired from: one handle per kind of route.
pub struct Handles {
    pub origins: Arc<OriginPolicy>,
    pub tls: bool,
    pub sessions: Sessions,
    pub accounts: Accounts,
    pub signup: self::signup::Signup,
    pub api: self::api::Api,
    pub rooms: RoomPages,
    pub room_history: self::history::RoomHistory,
    pub rooms_api: self::rooms::RoomsApi,
    pub account_api: self::account_api::AccountApi,
    pub account_pages: self::account_page::AccountPages,
    pub upgrader: Arc<Upgrader>,
    pub health: Arc<dyn Health>,
    pub backend_kind: BackendKind,
    pub assets: Arc<Assets>,
    pub readiness: Arc<Readiness>,
}

/// What `/readyz` knows beyond the store: whether a graceful shutdown has
/// begun (set first, before anything closes, so a load balancer polling
/// `/readyz` stops sending upgrades while this instance drains).
#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The route table: every method and path palaver answers.
pub fn routes(state: &Handles) -> Router {
    let sessions = &state.sessions;
    Router::new(state.origins.clone(), state.tls)
        .get("/", web(pages::index(sessions.clone())))
        .get("/login", web(account::login_form(sessions.clone())))
        .post("/login", web(account::login(state.accounts.clone())))
        .get("/register", web(self::signup::register_form(state.signup.clone())))
        .post("/register", web(self::signup::register(state.signup.clone())))
        .post("/logout", web(account::logout(sessions.clone())))
        .post("/logout/everywhere", web(account::logout_everywhere(sessions.clone())))
        .post("/session/refresh", web(account::refresh(sessions.clone(), state.upgrader.admission.clone())))
        .get("/account", web(self::account_page::show(state.account_pages.clone())))
        .post("/account/sessions/{id}/end", web(self::account_page::end(state.account_pages.clone())))
        .post("/account/sessions/end-others", web(self::account_page::end_others(state.account_pages.clone())))
        .post("/account/password", web(self::account_page::password(state.account_pages.clone())))
        .post("/account/invites", web(self::account_page::make_invite(state.account_pages.clone())))
        .post("/api/token", json_api(self::api::token(state.api.clone())))
        .post("/api/token/refresh", json_api(self::api::refresh(state.api.clone())))
        .post("/api/ws-ticket", json_api(self::api::ticket(state.api.clone())))
        .post("/api/logout", json_api(self::api::logout(state.api.clone(), false)))
        .post("/api/logout/everywhere", json_api(self::api::logout(state.api.clone(), true)))
        .post("/api/rooms", json_api(self::rooms::create(state.rooms_api.clone())))
        .get("/api/rooms", json_api(self::rooms::list(state.rooms_api.clone())))
        .get("/api/rooms/{name}/members", json_api(self::rooms::members(state.rooms_api.clone())))
        .put("/api/rooms/{name}/members/{username}", json_api(self::rooms::member(state.rooms_api.clone(), true)))
        .delete("/api/rooms/{name}/members/{username}", json_api(self::rooms::member(state.rooms_api.clone(), false)))
        .post("/api/direct", json_api(self::rooms::direct(state.rooms_api.clone())))
        .get("/api/sessions", json_api(self::account_api::list(state.account_api.clone())))
        .delete("/api/sessions/{id}", json_api(self::account_api::end(state.account_api.clone())))
        .post("/api/sessions/end-others", json_api(self::account_api::end_others(state.account_api.clone())))
        .post("/api/password", json_api(self::account_api::password(state.account_api.clone())))
        .get("/api/security-events", json_api(self::account_api::security_events(state.account_api.clone())))
        .get("/chat", web(pages::chat_redirect()))
        .get("/chat/{room}", web(pages::chat_room(state.rooms.clone())))
        .get("/chat/{room}/history", json_api(self::history::route(state.room_history.clone())))
        .get("/ws", Handler::Upgrade(state.upgrader.clone()))
        .get("/healthz", web(health(state.health.clone(), state.backend_kind)))
        .get("/readyz", web(ready(state.health.clone(), state.readiness.clone(), state.backend_kind)))
        .get("/static/{file}", web(assets::route(state.assets.clone())))
}

/// The `/healthz` body, fields in a fixed order.
#[derive(serde::Serialize)]
struct HealthBody {
    status: &'static str,
    backend: &'static str,
}

/// GET /healthz
fn health(health: Arc<dyn Health>, kind: BackendKind) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    with(health).and_then(move |health: Arc<dyn Health>| async move {
        let backend = kind.as_str();
        Ok::<_, Rejection>(match health.ping().await {
            Ok(()) => warp::reply::json(&HealthBody { status: "ok", backend }).into_response(),
            Err(err) => {
                tracing::warn!(%err, "health check: store unavailable");
                let body = warp::reply::json(&HealthBody { status: "unavailable", backend });
                warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response()
            }
        })
    })
}

/// GET /readyz: whether this instance should be sent traffic (and upgrades):
/// the store answers, the event subscription stands (else logouts from
/// other instances reach its sockets only through the sweep), and it is not
/// shutting down. 200 `{"status":"ok",…}`, else 503 with the first reason:
/// `draining`, `unavailable` (the store) or `unsubscribed`.
fn ready(
    health: Arc<dyn Health>,
    readiness: Arc<Readiness>,
    kind: BackendKind,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    with((health, readiness)).and_then(move |(health, readiness): (Arc<dyn Health>, Arc<Readiness>)| async move {
        let backend = kind.as_str();
        let status = if readiness.draining() {
            "draining"
        } else if let Err(err) = health.ping().await {
            tracing::warn!(%err, "readiness check: store unavailable");
            "unavailable"
        } else if !health.subscribed() {
            "unsubscribed"
        } else {
            "ok"
        };
        let body = warp::reply::json(&HealthBody { status, backend });
        Ok::<_, Rejection>(match status {
            "ok" => body.into_response(),
            _ => warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response(),
        })
    })
}
