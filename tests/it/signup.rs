//! Sign-up a team can live with (docs/protocol.md §7): invite-only
//! instances, the codes an operator or a user makes, and throttling that
//! lets an office behind one address in while a script from one address
//! cannot mass-register.

use reqwest::StatusCode;

use crate::{admin::admin, helpers::*};

on_both! {
    an_invite_only_instance_signs_up_only_whoever_brings_a_valid_code,
    concurrent_sign_ups_with_a_code_of_k_uses_admit_exactly_k,
}

const INVITE_ONLY: &[(&str, &str)] = &[("REGISTRATION", "invite")];

/// The code in the line `palaver admin invite …` printed.
fn code_of(line: &str) -> String {
    let (_, code) = line.trim_end().rsplit_once("invite=").unwrap_or_else(|| panic!("a link in {line:?}"));
    code.to_owned()
}

/// `palaver admin invite --uses <uses>`'s code.
async fn invite(redis: &dyn TestRedis, uses: u32) -> String {
    let ran = admin(redis, &["invite", "--uses", &uses.to_string()]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    code_of(&ran.stdout)
}

async fn sign_up(app: &TestApp, username: &str, invite: Option<&str>) -> reqwest::Response {
    let mut form = vec![("username", username), ("password", PASSWORD)];
    form.extend(invite.map(|code| ("invite", code)));
    Browser::new().post_form(app, "/register", &form).await
}

async fn an_invite_only_instance_signs_up_only_whoever_brings_a_valid_code(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(Some(redis), INVITE_ONLY).await;
    let page = Browser::new().get(&app, "/register").await.text().await.unwrap();
    assert!(page.contains("Signing up here takes an invite."), "{page}");

    let res = sign_up(&app, "nobody", None).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("Signing up here takes an invite."));
    let res = sign_up(&app, "guesser", Some("AAAAAAAAAAAAAAAAAAAAAA")).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("That invite code is not valid."));

    let ran = admin(redis, &["invite", "--uses", "2", "--days", "3"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stdout.starts_with("made an invite for 2 sign-ups within 3 days: http://"), "{}", ran.stdout);
    let code = code_of(&ran.stdout);
    // The link pre-fills the form's hidden field.
    let page = Browser::new().get(&app, &format!("/register?invite={code}")).await.text().await.unwrap();
    assert!(page.contains(&format!(r#"<input type="hidden" name="invite" value="{code}">"#)), "{page}");

    assert_redirect(&sign_up(&app, "first", Some(&code)).await, "/chat");
    // A name taken costs the code nothing.
    assert_eq!(sign_up(&app, "first", Some(&code)).await.status(), StatusCode::CONFLICT);
    assert_redirect(&sign_up(&app, "second", Some(&code)).await, "/chat");
    let res = sign_up(&app, "third", Some(&code)).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("That invite has been used up."));
    assert_eq!(Browser::new().login(&app, "third", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);

    let ran = admin(redis, &["invite", "--uses", "0"]).await;
    assert_ne!(ran.code, 0, "a code of no use is refused: {}", ran.stdout);
}

async fn concurrent_sign_ups_with_a_code_of_k_uses_admit_exactly_k(redis: &dyn TestRedis) {
    // Refusals count as failures: the address's budget is lifted so that
    // only the code decides.
    let app =
        TestApp::spawn_with(Some(redis), &[("REGISTRATION", "invite"), ("REGISTER_MAX_PER_ADDRESS", "100")]).await;
    let code = invite(redis, 3).await;
    let names: Vec<String> = (0..12).map(|i| format!("rush{i}")).collect();
    let statuses: Vec<StatusCode> =
        futures_util::future::join_all(names.iter().map(|name| sign_up(&app, name, Some(&code))))
            .await
            .iter()
            .map(|res| res.status())
            .collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::SEE_OTHER).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY).count(), 9, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_colleagues_behind_one_address_all_sign_up_with_codes() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), INVITE_ONLY).await;
    let code = invite(&redis, 50).await;
    for i in 0..50 {
        assert_redirect(&sign_up(&app, &format!("colleague{i}"), Some(&code)).await, "/chat");
    }
    let res = sign_up(&app, "colleague50", Some(&code)).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "the 51st: the code is used up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sign_up_lets_an_office_in_from_one_address_and_refuses_the_hundred_and_first() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[]).await;
    // Failures still count as before: a name taken is one.
    assert_redirect(&sign_up(&app, "taken", None).await, "/chat");
    for _ in 0..3 {
        assert_eq!(sign_up(&app, "taken", None).await.status(), StatusCode::CONFLICT);
    }
    for i in 1..100 {
        assert_redirect(&sign_up(&app, &format!("office{i}"), None).await, "/chat");
    }
    let res = sign_up(&app, "office100", None).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "the 101st account from one address");
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(Browser::new().login(&app, "office100", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    assert_redirect(&Browser::new().login(&app, "office99", PASSWORD).await, "/chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_users_make_a_few_invite_links_a_day_unless_the_operator_says_no() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("REGISTRATION", "invite"), ("INVITES_PER_USER_PER_DAY", "2")]).await;
    let code = invite(&redis, 1).await;
    let alice = Browser::new();
    let res =
        alice.post_form(&app, "/register", &[("username", "alice"), ("password", PASSWORD), ("invite", &code)]).await;
    assert_redirect(&res, "/chat");
    let page = alice.get(&app, "/account").await.text().await.unwrap();
    assert!(page.contains(r#"id="make-invite""#), "{page}");

    let mut links = Vec::new();
    for _ in 0..2 {
        let res = alice.post(&app, "/account/invites").await;
        assert_eq!(res.status(), StatusCode::OK);
        let page = res.text().await.unwrap();
        let (_, rest) = page.split_once(r#"id="invite-link" href=""#).expect("the link is shown");
        links.push(rest.split('"').next().unwrap().to_owned());
    }
    let res = alice.post(&app, "/account/invites").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "two a day");
    assert!(res.text().await.unwrap().contains("as many invites as you may today"));

    let link = &links[0];
    assert!(link.starts_with(&format!("{}/register?invite=", app.origin)), "{link}");
    assert_redirect(&sign_up(&app, "bob", Some(&code_of(link))).await, "/chat");
    assert_eq!(sign_up(&app, "carol", Some(&code_of(link))).await.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let closed = TestApp::spawn_with(Some(&redis), &[("REGISTRATION", "invite"), ("INVITES_BY_USERS", "false")]).await;
    let bob = Browser::new();
    assert_redirect(&bob.login(&closed, "bob", PASSWORD).await, "/chat");
    assert!(!bob.get(&closed, "/account").await.text().await.unwrap().contains(r#"id="make-invite""#));
    assert_eq!(bob.post(&closed, "/account/invites").await.status(), StatusCode::NOT_FOUND);
}
