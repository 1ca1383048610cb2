//! TLS: with `TLS_CERT` and `TLS_KEY` the server speaks HTTPS and WSS only,
//! its cookie is `Secure`, and it sends HSTS. The certificate is made here.

use std::sync::Arc;

use reqwest::{redirect::Policy, StatusCode};
use rustls::pki_types::CertificateDer;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue},
    Connector,
};

use crate::helpers::*;

/// A self-signed certificate for localhost and 127.0.0.1, in PEM files.
pub struct Identity {
    _dir: tempfile::TempDir,
    pub cert_path: String,
    pub key_path: String,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
}

pub fn identity() -> Identity {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    Identity {
        cert_path: cert_path.display().to_string(),
        key_path: key_path.display().to_string(),
        cert_pem: certified.cert.pem(),
        cert_der: certified.cert.der().to_vec(),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_it_speaks_https_and_wss_only() {
    let id = identity();
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("TLS_CERT", &id.cert_path), ("TLS_KEY", &id.key_path)]).await;
    assert!(app.origin.starts_with("https://127.0.0.1:"), "{}", app.origin);

    let jar = Arc::new(reqwest::cookie::Jar::default());
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(id.cert_pem.as_bytes()).unwrap())
        .cookie_provider(jar.clone())
        .redirect(Policy::none())
        .build()
        .unwrap();
    let health = https.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(health.headers()["strict-transport-security"].to_str().unwrap().contains("max-age="));

    let registered =
        https.post(app.url("/register")).form(&[("username", "alice"), ("password", PASSWORD)]).send().await.unwrap();
    assert_eq!(registered.status(), StatusCode::SEE_OTHER);
    let cookie = registered.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("Secure") && cookie.contains("HttpOnly"), "{cookie}");

    // Plain HTTP on the same port gets nowhere.
    let plain = reqwest::get(format!("http://{}/healthz", app.addr)).await;
    assert!(plain.is_err() || plain.unwrap().status() != StatusCode::OK);

    // WSS with the session cookie.
    use reqwest::cookie::CookieStore;
    let session = jar.cookies(&app.url("/").parse().unwrap()).unwrap();
    let mut request = format!("wss://{}/ws", app.addr).into_client_request().unwrap();
    request.headers_mut().insert("cookie", HeaderValue::from_str(session.to_str().unwrap()).unwrap());
    request.headers_mut().insert("origin", HeaderValue::from_str(&app.origin).unwrap());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(id.cert_der.clone())).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(Connector::Rustls(Arc::new(tls))))
            .await
            .expect("wss upgrade");
    let mut socket = Socket::new(ws);
    let hello = socket.next_of("hello").await;
    assert_eq!(hello["user"], "alice");
}

#[test]
fn a_missing_certificate_stops_start_up_with_a_clear_error() {
    let config = palaver::Config::from_map(
        &[("TLS_CERT", "/nonexistent/cert.pem"), ("TLS_KEY", "/nonexistent/key.pem"), ("PALAVER_BACKEND", "memory")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let err = runtime.block_on(palaver::Application::build(config)).err().expect("refused");
    assert!(err.to_string().contains("TLS_CERT /nonexistent/cert.pem"), "{err}");
}
