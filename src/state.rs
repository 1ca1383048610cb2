//! The state every request and socket shares.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{
    auth::{session::SessionPolicy, throttle::LoginThrottle},
    backend::Backend,
    chat::presence::Presence,
    config::Config,
    realtime::registry::Registry,
    web::{assets::Assets, guard::OriginPolicy},
};

/// Largest WebSocket frame or message a client may send (SPEC §3: 1009 above).
pub const MAX_FRAME_BYTES: usize = 16 * 1024;

pub struct AppState {
    pub config: Config,
    /// Random per process: names this instance's presence entries and wake key.
    pub instance_id: String,
    pub public_origin: String,
    pub origins: OriginPolicy,
    pub backend: Backend,
    pub sessions: SessionPolicy,
    pub throttle: LoginThrottle,
    pub registry: Registry,
    pub presence: Presence,
    pub assets: Assets,
    /// Small buffers: most sockets are idle most of the time, and tungstenite's
    /// default 128 KiB read buffer would cost that much per socket.
    pub ws_config: WebSocketConfig,
    pub tls: bool,
}

pub type SharedState = Arc<AppState>;

pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}
