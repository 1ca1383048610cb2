//! The route table, enumerated from the running instance (not from a list
//! written here): every unsafe route refuses cross-origin requests before
//! its handler runs, every GET route answers HEAD, and a wrong method gets
//! 405 with `Allow`.

use reqwest::{Method, StatusCode};

use crate::helpers::*;

/// A concrete path for a pattern: each `{param}` gets a valid sample.
fn sample(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| match segment {
            "{room}" => "lobby",
            "{file}" => "chat.js",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[tokio::test]
async fn every_unsafe_route_refuses_cross_origin_requests_and_changes_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let unsafe_routes: Vec<_> = app.routes.iter().filter(|(m, _)| is_unsafe(m)).collect();
    assert!(unsafe_routes.len() >= 5, "the table lists the POST routes: {:?}", app.routes);
    let form = [("username", "mallory"), ("password", PASSWORD)];
    for (method, pattern) in &unsafe_routes {
        let path = sample(pattern);
        for (header, value) in
            [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site"), ("origin", "null")]
        {
            let res = alice
                .http
                .request(method.clone(), app.url(&path))
                .header(header, value)
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method} {path} with {header}: {value}");
        }
    }
    // Nothing changed: alice is still signed in, mallory does not exist.
    assert_eq!(alice.get(&app, "/chat/lobby").await.status(), StatusCode::OK);
    assert_eq!(Browser::new().login(&app, "mallory", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    // The page's own origin passes.
    let res = alice.http.post(app.url("/session/refresh")).header("origin", &app.origin).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn every_get_route_answers_head_and_a_wrong_method_gets_405_with_allow() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    for (method, pattern) in &app.routes {
        let path = sample(pattern);
        let allowed: Vec<&Method> = app.routes.iter().filter(|(_, p)| p == pattern).map(|(m, _)| m).collect();
        if *method == Method::GET && *pattern != "/ws" {
            let get = alice.get(&app, &path).await;
            let head = alice.http.head(app.url(&path)).send().await.unwrap();
            assert_eq!(head.status(), get.status(), "HEAD {path}");
            assert!(head.text().await.unwrap().is_empty(), "HEAD {path} has no body");
        }
        // PATCH: the one unsafe method no route takes.
        let res = alice.http.patch(app.url(&path)).header("origin", &app.origin).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "PATCH {path}");
        let allow = res.headers()["allow"].to_str().unwrap().to_owned();
        for m in &allowed {
            assert!(allow.contains(m.as_str()), "Allow for {path} is {allow:?}, lacks {m}");
        }
        assert_eq!(allow.contains("HEAD"), allowed.contains(&&Method::GET), "Allow for {path} is {allow:?}");
    }
    assert_eq!(alice.get(&app, "/no/such/page").await.status(), StatusCode::NOT_FOUND);
}
