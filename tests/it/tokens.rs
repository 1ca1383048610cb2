//! Sockets for clients that are not browsers (docs/protocol.md §5): access
//! tokens over every transport, refusals before any 101, refresh rotation
//! and reuse, in-band re-authentication across token expiries, and token
//! sessions ending with every other session of the user.

use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

use crate::helpers::*;

on_both! {
    a_password_gets_a_token_pair_and_mistakes_get_json_errors,
    the_token_api_shares_the_login_throttle,
    every_transport_opens_a_token_socket_and_the_subprotocol_is_answered_without_the_token,
    a_token_of_an_ended_session_is_refused_and_logout_everywhere_ends_token_sessions,
    refresh_rotates_replays_within_the_grace_and_reuse_after_it_ends_the_session,
    a_token_socket_reauthenticates_in_band_across_expiries_and_one_that_does_not_is_closed,
    a_previous_key_is_accepted_during_a_rotation_and_a_retired_one_is_not,
    with_no_key_configured_instances_share_a_generated_one,
}

/// Signs in over the token API and returns the pair.
async fn token_pair(app: &TestApp, username: &str) -> Value {
    let res = api_post(app, "/api/token", json!({"username": username, "password": PASSWORD}), None).await;
    assert_eq!(res.status(), StatusCode::OK, "signing in {username} over the API");
    assert_eq!(res.headers()["cache-control"], "no-store", "credentials are never cached");
    res.json().await.unwrap()
}

async fn api_post(app: &TestApp, path: &str, body: Value, bearer: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(app.url(path)).json(&body);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("POST")
}

async fn api_error(res: reqwest::Response) -> (StatusCode, String) {
    let status = res.status();
    let text = res.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("every /api/ error is JSON: {status} {text}"));
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    (status, body["error"].as_str().unwrap().to_owned())
}

/// How a socket presents its token.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Bearer,
    Subprotocol,
    QueryToken,
}

async fn open_with(app: &TestApp, transport: Transport, token: &str, query: &str) -> Result<Socket, StatusCode> {
    let sep = if query.is_empty() { "?" } else { "&" };
    let url = match transport {
        Transport::QueryToken => app.ws_url(&format!("{query}{sep}token={token}")),
        _ => app.ws_url(query),
    };
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    match transport {
        Transport::Bearer => {
            headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        }
        Transport::Subprotocol => {
            headers.insert("sec-websocket-protocol", HeaderValue::from_str(&format!("jwt, {token}")).unwrap());
        }
        Transport::QueryToken => {}
    }
    connect(request).await
}

async fn a_password_gets_a_token_pair_and_mistakes_get_json_errors(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    signed_up(&app, "alice").await;
    let pair = token_pair(&app, "alice").await;
    assert_eq!(pair["token_type"], "Bearer");
    assert!((1..=300).contains(&pair["expires_in"].as_u64().unwrap()), "{pair}");
    assert!(pair["session_expires_at"].as_i64().unwrap() > palaver::clock::UnixMillis::now().as_millis());
    let access = pair["access_token"].as_str().unwrap();
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(access.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!((header["alg"].as_str(), header["typ"].as_str()), (Some("EdDSA"), Some("at+jwt")));
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(access.split('.').nth(1).unwrap()).unwrap()).unwrap();
    for claim in ["iss", "aud", "sub", "name", "sid", "iat", "exp", "jti"] {
        assert!(!claims[claim].is_null(), "claim {claim} in {claims}");
    }
    assert_eq!(
        (claims["iss"].as_str(), claims["aud"].as_str(), claims["name"].as_str()),
        (Some(app.origin.as_str()), Some("palaver"), Some("alice"))
    );
    // The sid names the session but is no cookie: it opens nothing.
    let sid_as_cookie = Browser::new();
    sid_as_cookie.set_session_id(&app, claims["sid"].as_str().unwrap());
    assert_eq!(sid_as_cookie.open_socket(&app, "").await.err(), Some(StatusCode::UNAUTHORIZED));

    let wrong = api_post(&app, "/api/token", json!({"username": "alice", "password": "not it"}), None).await;
    assert_eq!(api_error(wrong).await, (StatusCode::UNAUTHORIZED, "invalid_credentials".into()));
    let nobody = api_post(&app, "/api/token", json!({"username": "nobody", "password": "not it"}), None).await;
    assert_eq!(api_error(nobody).await, (StatusCode::UNAUTHORIZED, "invalid_credentials".into()));
    let malformed = api_post(&app, "/api/token", json!({"user": "alice"}), None).await;
    assert_eq!(api_error(malformed).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    let not_json = reqwest::Client::new().post(app.url("/api/token")).body("username=alice").send().await.unwrap();
    assert_eq!(api_error(not_json).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let unknown = reqwest::Client::new().get(app.url("/api/nothing")).send().await.unwrap();
    assert_eq!(api_error(unknown).await.0, StatusCode::NOT_FOUND);
    let foreign = reqwest::Client::new()
        .post(app.url("/api/token"))
        .header("origin", "https://evil.example")
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(foreign).await, (StatusCode::FORBIDDEN, "cross_origin".into()));
}

async fn the_token_api_shares_the_login_throttle(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(Some(redis), &[("LOGIN_MAX_FAILURES", "2")]).await;
    signed_up(&app, "alice").await;
    for _ in 0..2 {
        assert_eq!(Browser::new().login(&app, "alice", "wrong password").await.status(), StatusCode::UNAUTHORIZED);
    }
    let res = api_post(&app, "/api/token", json!({"username": "alice", "password": PASSWORD}), None).await;
    assert!(res.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(api_error(res).await, (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts".into()));
}

async fn every_transport_opens_a_token_socket_and_the_subprotocol_is_answered_without_the_token(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    signed_up(&app, "alice").await;
    let pair = token_pair(&app, "alice").await;
    let access = pair["access_token"].as_str().unwrap();
    for transport in [Transport::Bearer, Transport::Subprotocol, Transport::QueryToken] {
        let mut socket = open_with(&app, transport, access, "?room=ops").await.expect("upgrade accepted");
        let hello = socket.next_of("hello").await;
        assert_eq!((hello["user"].as_str(), hello["room"].as_str()), (Some("alice"), Some("ops")), "{transport:?}");
        socket.say("hi", &format!("{transport:?}")).await;
    }
    // The 101 names the protocol, never the token.
    let mut request = app.ws_url("").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(&format!("jwt, {access}")).unwrap());
    let (_ws, response) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    let answered: Vec<&str> =
        response.headers().get_all("sec-websocket-protocol").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(answered, ["jwt"]);

    // A ticket opens one socket, once.
    let res = api_post(&app, "/api/ws-ticket", json!({}), Some(access)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let ticket: Value = res.json().await.unwrap();
    assert_eq!(ticket["expires_in"], 30);
    let query = format!("?ticket={}", ticket["ticket"].as_str().unwrap());
    let mut socket = connect(app.ws_url(&query).into_client_request().unwrap()).await.expect("ticket accepted");
    assert_eq!(socket.next_of("hello").await["user"], "alice");
    assert_eq!(
        connect(app.ws_url(&query).into_client_request().unwrap()).await.err(),
        Some(StatusCode::UNAUTHORIZED),
        "spent"
    );
    let no_bearer = api_post(&app, "/api/ws-ticket", json!({}), None).await;
    assert_eq!(api_error(no_bearer).await, (StatusCode::UNAUTHORIZED, "invalid_token".into()));
}

/// A token with these claims and header fields, signed with `key`.
fn forged(header: Header, claims: &Value, key: &EncodingKey) -> String {
    encode(&header, claims, key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_the_upgrade_without_the_store() {
    let mut redis = RedisServer::start_persistent();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    let pair = token_pair(&app, "alice").await;
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = access.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap();

    // The server's public key (anyone may know it), used as an HS256 secret.
    let stored = resp_lines(&redis.command(&["GET", "palaver:token-signing-key"]).unwrap()).remove(0);
    let pkcs8 = base64::engine::general_purpose::STANDARD.decode(stored).unwrap();
    let public = {
        use ring::signature::{Ed25519KeyPair, KeyPair};
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap().public_key().as_ref().to_vec()
    };
    let other = palaver::auth::tokens::generate_signing_key();
    let mut hs = Header::new(Algorithm::HS256);
    hs.typ = Some("at+jwt".into());
    hs.kid = Some(kid.into());
    let mut flipped = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    flipped[0] ^= 1;
    let ed = |typ: &str, claims: &Value| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some(typ.into());
        h.kid = Some(kid.into());
        forged(h, claims, &EncodingKey::from_ed_der(&other))
    };
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = "someone-else".into();
    let mut expired = claims.clone();
    expired["exp"] = json!(palaver::clock::UnixMillis::now().as_secs() - 5);
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{kid}"}}"#)),
        parts[1]
    );
    let cases = [
        ("a flipped signature bit", format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&flipped))),
        ("alg none", none),
        ("HS256 keyed with the public key", forged(hs, &claims, &EncodingKey::from_secret(&public))),
        ("signed by a key we never had", ed("at+jwt", &claims)),
        ("wrong typ", ed("JWT", &claims)),
        ("wrong aud", ed("at+jwt", &wrong_aud)),
        ("expired", ed("at+jwt", &expired)),
        ("garbage", "not.a.token".to_owned()),
    ];
    // With Redis gone, a refusal that needed no store is still a 401.
    redis.stop();
    for (what, token) in &cases {
        for transport in [Transport::Bearer, Transport::Subprotocol, Transport::QueryToken] {
            assert_eq!(
                open_with(&app, transport, token, "").await.err(),
                Some(StatusCode::UNAUTHORIZED),
                "{what} over {transport:?}"
            );
        }
    }
    // A good token needs its session read: the store being down is a 503.
    assert_eq!(open_with(&app, Transport::Bearer, &access, "").await.err(), Some(StatusCode::SERVICE_UNAVAILABLE));
    let res = api_post(&app, "/api/token", json!({"username": "alice", "password": PASSWORD}), None).await;
    assert_eq!(api_error(res).await, (StatusCode::SERVICE_UNAVAILABLE, "unavailable".into()));
    redis.restart();
    let app_ref = &app;
    let access_ref = &access;
    eventually("the good token to open a socket again", || async move {
        open_with(app_ref, Transport::Bearer, access_ref, "").await.is_ok()
    })
    .await;
}

async fn a_token_of_an_ended_session_is_refused_and_logout_everywhere_ends_token_sessions(redis: &dyn TestRedis) {
    let (a, b) = TestApp::spawn_group(redis, &[]).await;
    let browser = signed_up(&a, "alice").await;
    let (mut browsers, _) = browser.join(&a, "").await;
    let pair = token_pair(&b, "alice").await;
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let mut cli = open_with(&b, Transport::Bearer, &access, "").await.unwrap();
    cli.next_of("hello").await;

    // The CLI's own logout ends only its session.
    let other = token_pair(&b, "alice").await;
    let other_access = other["access_token"].as_str().unwrap().to_owned();
    let mut other_socket = open_with(&a, Transport::Bearer, &other_access, "").await.unwrap();
    other_socket.next_of("hello").await;
    let res = api_post(&b, "/api/logout", json!({}), Some(&other_access)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(other_socket.closed().await, (4401, "logged out".to_string()));
    assert_eq!(open_with(&a, Transport::Bearer, &other_access, "").await.err(), Some(StatusCode::UNAUTHORIZED));
    let refreshed = api_post(&b, "/api/token/refresh", json!({"refresh_token": other["refresh_token"]}), None).await;
    assert_eq!(api_error(refreshed).await, (StatusCode::UNAUTHORIZED, "invalid_grant".into()));
    browsers.say("the browser is untouched", "b1").await;

    // The browser logs out everywhere: the token socket on the other
    // instance closes, and the token opens nothing any more.
    assert_redirect(&browser.post(&a, "/logout/everywhere").await, "/login");
    assert_eq!(
        within_for(Duration::from_secs(3), "the token socket to close", cli.closed()).await,
        (4401, "logged out".to_string())
    );
    assert_eq!(open_with(&a, Transport::Bearer, &access, "").await.err(), Some(StatusCode::UNAUTHORIZED));
}

async fn refresh_rotates_replays_within_the_grace_and_reuse_after_it_ends_the_session(redis: &dyn TestRedis) {
    let vars = [("REFRESH_REUSE_GRACE_SECS", "1")];
    let (a, b) = TestApp::spawn_group(redis, &vars).await;
    signed_up(&a, "alice").await;
    let first = token_pair(&a, "alice").await;
    let refresh = |token: Value| {
        let app = &a;
        async move { api_post(app, "/api/token/refresh", json!({"refresh_token": token}), None).await }
    };
    let second: Value = refresh(first["refresh_token"].clone()).await.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);
    // Stored only as a hash: no key or string value in Redis holds a secret.
    for pair in [&first, &second] {
        let secret = pair["refresh_token"].as_str().unwrap().split_once('.').unwrap().1;
        for key in redis.all_keys() {
            assert!(!key.contains(secret), "a key holds a refresh secret: {key}");
            if redis.command(&["TYPE", &key]).unwrap().starts_with("+string") {
                let value = redis.command(&["GET", &key]).unwrap();
                assert!(!value.contains(secret), "{key} holds a refresh secret");
            }
        }
    }
    // Presented again at once (a retry, another tab): the same successor.
    let again: Value = refresh(first["refresh_token"].clone()).await.json().await.unwrap();
    assert_eq!(again["refresh_token"], second["refresh_token"]);

    // A socket of the session on the other instance.
    let mut socket = open_with(&b, Transport::Bearer, second["access_token"].as_str().unwrap(), "").await.unwrap();
    socket.next_of("hello").await;
    // After the grace, the spent token again: two parties hold it.
    let first_ref = first["refresh_token"].clone();
    let a_ref = &a;
    let reused = poll(DEADLINE, || {
        let token = first_ref.clone();
        async move {
            let res = api_post(a_ref, "/api/token/refresh", json!({"refresh_token": token}), None).await;
            (res.status() == StatusCode::UNAUTHORIZED).then_some(res)
        }
    })
    .await
    .expect("the spent token to be refused after the grace");
    assert_eq!(api_error(reused).await, (StatusCode::UNAUTHORIZED, "invalid_grant".into()));
    assert_eq!(
        within_for(Duration::from_secs(3), "the socket to close", socket.closed()).await,
        (4401, "session revoked".to_string())
    );
    // The whole session is over: its current refresh token too.
    let current = refresh(second["refresh_token"].clone()).await;
    assert_eq!(api_error(current).await, (StatusCode::UNAUTHORIZED, "invalid_grant".into()));
}

async fn a_token_socket_reauthenticates_in_band_across_expiries_and_one_that_does_not_is_closed(redis: &dyn TestRedis) {
    let vars = [("ACCESS_TOKEN_TTL_SECS", "3"), ("REAUTH_WARNING_SECS", "2")];
    let app = TestApp::spawn_with(Some(redis), &vars).await;
    signed_up(&app, "alice").await;
    let mut pair = token_pair(&app, "alice").await;
    let mut socket = open_with(&app, Transport::Bearer, pair["access_token"].as_str().unwrap(), "").await.unwrap();
    let hello = socket.next_of("hello").await;
    let first_deadline = hello["expires_at"].as_i64().unwrap();
    let mut deadline = first_deadline;
    for round in 0..2 {
        let warned = socket.next_of("reauthenticate").await;
        assert_eq!(warned["expires_at"].as_i64().unwrap(), deadline, "round {round}");
        let res = api_post(&app, "/api/token/refresh", json!({"refresh_token": pair["refresh_token"]}), None).await;
        pair = res.json().await.unwrap();
        socket.send_json(json!({"type": "reauth", "token": pair["access_token"]})).await;
        let moved = socket.next_of("reauthenticated").await["expires_at"].as_i64().unwrap();
        assert!(moved > deadline, "round {round}: {moved} after {deadline}");
        deadline = moved;
    }
    assert!(
        palaver::clock::UnixMillis::now().as_millis() < first_deadline,
        "two rounds come before the first token ends"
    );
    // And it outlives the first token by far, one round per warning.
    let mut rounds = 2;
    while palaver::clock::UnixMillis::now().as_millis() < first_deadline + 1_500 {
        socket.next_of("reauthenticate").await;
        pair = api_post(&app, "/api/token/refresh", json!({"refresh_token": pair["refresh_token"]}), None)
            .await
            .json()
            .await
            .unwrap();
        socket.send_json(json!({"type": "reauth", "token": pair["access_token"]})).await;
        socket.next_of("reauthenticated").await;
        rounds += 1;
        assert!(rounds < 10, "a round per second or so");
    }
    socket.say("still here", "s1").await;

    // A reauth with another session's token is refused.
    let other = token_pair(&app, "alice").await;
    socket.send_json(json!({"type": "reauth", "token": other["access_token"]})).await;
    assert_eq!(socket.closed().await, (4401, "invalid token".to_string()));

    // One that never re-authenticates ends with its token...
    let mut idle = open_with(&app, Transport::Bearer, pair["access_token"].as_str().unwrap(), "").await.unwrap();
    idle.next_of("reauthenticate").await;
    assert_eq!(idle.closed().await, (4401, "token expired".to_string()));
    // ...and so does one opened with a ticket: with the token it came from.
    let pair: Value = api_post(&app, "/api/token/refresh", json!({"refresh_token": pair["refresh_token"]}), None)
        .await
        .json()
        .await
        .unwrap();
    let ticket: Value =
        api_post(&app, "/api/ws-ticket", json!({}), pair["access_token"].as_str()).await.json().await.unwrap();
    let query = format!("?ticket={}", ticket["ticket"].as_str().unwrap());
    let mut ticketed = connect(app.ws_url(&query).into_client_request().unwrap()).await.expect("ticket accepted");
    let hello = ticketed.next_of("hello").await;
    let token_exp: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD.decode(pair["access_token"].as_str().unwrap().split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(hello["expires_at"].as_i64().unwrap(), token_exp["exp"].as_i64().unwrap() * 1000);
    assert_eq!(ticketed.closed().await, (4401, "token expired".to_string()));
}

/// A PKCS#8 private key and its SubjectPublicKeyInfo, as PEM files.
fn key_files(dir: &std::path::Path, name: &str) -> (String, String) {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = palaver::auth::tokens::generate_signing_key();
    let public = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap().public_key().as_ref().to_vec();
    let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    spki.extend_from_slice(&public);
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
    };
    let (private, public) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.pub.pem")));
    std::fs::write(&private, pem("PRIVATE KEY", &pkcs8)).unwrap();
    std::fs::write(&public, pem("PUBLIC KEY", &spki)).unwrap();
    (private.display().to_string(), public.display().to_string())
}

async fn a_previous_key_is_accepted_during_a_rotation_and_a_retired_one_is_not(redis: &dyn TestRedis) {
    let dir = tempfile::tempdir().unwrap();
    let (old_private, old_public) = key_files(dir.path(), "old");
    let (new_private, _) = key_files(dir.path(), "new");
    // Three instances of one group (each accepts the others' origin as issuer).
    let ports = [free_port(), free_port(), free_port()];
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let group = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    fn member<'a>(listen: &'a str, group: &'a str, keys: &[(&'static str, &'a str)]) -> Vec<(&'static str, &'a str)> {
        let mut vars = vec![("LISTEN_ADDR", listen), ("ALLOWED_ORIGINS", group)];
        vars.extend_from_slice(keys);
        vars
    }
    let old =
        TestApp::spawn_with(Some(redis), &member(&listen[0], &group, &[("TOKEN_SIGNING_KEY", &old_private)])).await;
    signed_up(&old, "alice").await;
    let pair = token_pair(&old, "alice").await;
    let access = pair["access_token"].as_str().unwrap();

    let rotating = TestApp::spawn_with(
        Some(redis),
        &member(&listen[1], &group, &[("TOKEN_SIGNING_KEY", &new_private), ("TOKEN_PREVIOUS_KEYS", &old_public)]),
    )
    .await;
    let mut socket = open_with(&rotating, Transport::Bearer, access, "").await.expect("the previous key is accepted");
    socket.next_of("hello").await;
    // New tokens come from the new key; the old instance cannot read them.
    let fresh = token_pair(&rotating, "alice").await;
    assert_eq!(
        open_with(&old, Transport::Bearer, fresh["access_token"].as_str().unwrap(), "").await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    let retired =
        TestApp::spawn_with(Some(redis), &member(&listen[2], &group, &[("TOKEN_SIGNING_KEY", &new_private)])).await;
    assert_eq!(open_with(&retired, Transport::Bearer, access, "").await.err(), Some(StatusCode::UNAUTHORIZED));
}

async fn with_no_key_configured_instances_share_a_generated_one(redis: &dyn TestRedis) {
    let (a, b) = TestApp::spawn_group(redis, &[]).await;
    signed_up(&a, "alice").await;
    let pair = token_pair(&a, "alice").await;
    let mut socket = open_with(&b, Transport::Bearer, pair["access_token"].as_str().unwrap(), "")
        .await
        .expect("b verifies a's token");
    socket.next_of("hello").await;
}

/// An instance of a group reached at `ports` (one each, on loopback): it
/// listens on the `i`th and accepts the others' origins.
async fn spawn_member(redis: &RedisServer, ports: &[u16], i: usize, extra: &[(&str, &str)]) -> TestApp {
    let listen = format!("127.0.0.1:{}", ports[i]);
    let others: Vec<String> =
        ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, port)| format!("http://127.0.0.1:{port}")).collect();
    let others = others.join(",");
    let mut vars = vec![("LISTEN_ADDR", listen.as_str()), ("ALLOWED_ORIGINS", others.as_str())];
    vars.extend_from_slice(extra);
    TestApp::spawn_with(Some(redis), &vars).await
}

/// Whether `app` takes `access_token` (it gives a ticket for it).
async fn accepts(app: &TestApp, access_token: &Value) -> bool {
    let res = api_post(app, "/api/ws-ticket", json!({}), Some(access_token.as_str().unwrap())).await;
    match res.status() {
        StatusCode::OK => true,
        StatusCode::UNAUTHORIZED => false,
        other => panic!("ws-ticket: {other}"),
    }
}

/// Issue 20, item 5. Without `TOKEN_SIGNING_KEY`, the store loses its data
/// (`FLUSHALL`) while two instances run, and a third starts on the empty
/// store (generating keys of its own). Within a bound, every instance
/// accepts every instance's tokens (those signed before they agreed too),
/// and a refresh made on one and retried on another within the grace gets
/// the same successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_store_forgets_the_generated_keys_every_instance_converges_on_one() {
    let redis = RedisServer::start();
    let grace = [("REFRESH_REUSE_GRACE_SECS", "60")];
    let ports = [free_port(), free_port(), free_port()];
    let a = spawn_member(&redis, &ports, 0, &grace).await;
    let b = spawn_member(&redis, &ports, 1, &grace).await;
    assert!(redis.command(&["FLUSHALL"]).unwrap().starts_with("+OK"));
    // On the empty store `c` writes its keys first, unless `a` or `b` got
    // theirs back before it started: either way one must win.
    let c = spawn_member(&redis, &ports, 2, &grace).await;
    let apps = [&a, &b, &c];
    // Right away: alice (gone with the store) signs up again and signs in
    // on each, and refreshes on `a`.
    signed_up(&a, "alice").await;
    let mut pairs = Vec::new();
    for app in apps {
        pairs.push(token_pair(app, "alice").await);
    }
    let refresh = |app: &TestApp, token: &Value| {
        let (url, body) = (app.url("/api/token/refresh"), json!({"refresh_token": token}));
        async move { reqwest::Client::new().post(url).json(&body).send().await.unwrap() }
    };
    let rotated: Value = refresh(&a, &pairs[0]["refresh_token"]).await.json().await.unwrap();
    let mut tokens: Vec<Value> = pairs.iter().map(|pair| pair["access_token"].clone()).collect();
    tokens.push(rotated["access_token"].clone());

    let tokens = &tokens;
    eventually("every instance to accept every instance's tokens", || async move {
        for app in apps {
            for token in tokens {
                if !accepts(app, token).await {
                    return false;
                }
            }
        }
        true
    })
    .await;
    // One key from now on: a token from any is accepted by all at once.
    for app in apps {
        let fresh = token_pair(app, "alice").await;
        for other in apps {
            assert!(accepts(other, &fresh["access_token"]).await);
        }
    }
    // The refresh made on `a`, retried on the others within the grace.
    for app in [&c, &b] {
        let again = refresh(app, &pairs[0]["refresh_token"]).await;
        assert_eq!(again.status(), StatusCode::OK, "a retry, not a reuse");
        let again: Value = again.json().await.unwrap();
        assert_eq!(again["refresh_token"], rotated["refresh_token"], "the same successor");
    }
}
