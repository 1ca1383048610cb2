//! The configuration's rules: defaults, ranges, and the rules between
//! variables.

use super::*;

fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_map(&map)
}

#[test]
fn defaults_match_the_spec() {
    let c = config(&[]).unwrap();
    assert_eq!(c.server.listen_addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.store.backend, BackendChoice::Auto);
    assert_eq!(c.sessions.ttl, Duration::from_secs(1800));
    assert_eq!(c.sessions.max_lifetime, Duration::from_secs(43200));
    assert_eq!(c.sessions.long_ttl, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(c.sessions.long_max_lifetime, Duration::from_secs(90 * 24 * 3600));
    assert_eq!(c.sessions.reauth_warning, Duration::from_secs(60));
    assert_eq!(c.sessions.revalidate_interval, Duration::from_secs(30));
    assert_eq!(c.throttle.login_max_failures, 10);
    assert_eq!(c.throttle.login_window, Duration::from_secs(900));
    assert_eq!(c.throttle.register_max_successes_per_address, 100);
    assert_eq!(c.signup.registration, Registration::Open);
    assert!(c.signup.invites_by_users);
    assert_eq!(c.signup.invites_per_user_per_day, 10);
    assert_eq!(c.sockets.max_connections, 50_000);
    assert_eq!(c.sockets.max_pending_upgrades, 4096);
    assert_eq!(c.sockets.upgrade_retry_after_max, Duration::from_secs(5));
    assert_eq!(c.connections.http_idle_timeout, Duration::from_secs(30));
    assert_eq!(c.connections.http_header_timeout, Duration::from_secs(10));
    assert_eq!(c.connections.http_request_timeout, Duration::from_secs(30));
    assert_eq!(c.connections.tls_handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.connections.max_open, 60_000);
    assert_eq!(c.chat.history_page_max, 100);
    assert_eq!(c.chat.mention_inbox_len, 100);
    assert!(c.server.tls.is_none() && c.store.redis_url.is_none() && c.server.cookie_secure.is_none());
    assert_eq!(c.store.wait_replicas, None, "decided by the kind of Redis");
    assert_eq!(c.store.wait_timeout, Duration::from_millis(500));
    assert_eq!(c.server.shutdown_drain, Duration::ZERO);
    let c = config(&[("REDIS_WAIT_REPLICAS", "0"), ("REDIS_WAIT_TIMEOUT_MS", "1500")]).unwrap();
    assert_eq!((c.store.wait_replicas, c.store.wait_timeout), (Some(0), Duration::from_millis(1500)));
    let c = config(&[("REGISTRATION", "invite"), ("INVITES_BY_USERS", "false")]).unwrap();
    assert_eq!((c.signup.registration, c.signup.invites_by_users), (Registration::Invite, false));
    assert_eq!(config(&[("REGISTRATION", "closed")]).unwrap_err().name, "REGISTRATION");
}

#[test]
fn a_bad_value_names_its_variable() {
    let err = config(&[("SESSION_TTL_SECS", "soon")]).unwrap_err();
    assert_eq!(err.name, "SESSION_TTL_SECS");
    assert!(err.to_string().contains("soon"));
    assert_eq!(config(&[("PALAVER_BACKEND", "sqlite")]).unwrap_err().name, "PALAVER_BACKEND");
    assert_eq!(config(&[("TLS_CERT", "/x.pem")]).unwrap_err().name, "TLS_CERT");
    assert_eq!(config(&[("PUBLIC_ORIGIN", "example.com")]).unwrap_err().name, "PUBLIC_ORIGIN");
    assert_eq!(config(&[("TRUSTED_PROXIES", "10.0.0.1, lb")]).unwrap_err().name, "TRUSTED_PROXIES");
    assert_eq!(config(&[("TRUSTED_PROXIES", "10.0.0.0/8,::1")]).unwrap().server.trusted_proxies.len(), 2);
}

#[test]
fn extra_origins_are_normalized() {
    let c = config(&[("ALLOWED_ORIGINS", "http://a:1, https://b ")]).unwrap();
    assert_eq!(c.server.allowed_origins, vec!["http://a:1", "https://b"]);
}

#[test]
fn the_default_origin_follows_the_bound_address() {
    let c = config(&[]).unwrap();
    assert_eq!(c.server.resolve_origin("127.0.0.1:4000".parse().unwrap()), "http://127.0.0.1:4000");
    let c = config(&[("PUBLIC_ORIGIN", "https://chat.example.com")]).unwrap();
    assert_eq!(c.server.resolve_origin("127.0.0.1:4000".parse().unwrap()), "https://chat.example.com");
}

/// Every numeric variable, with values just outside what it accepts.
const OUT_OF_RANGE: &[(&str, &str)] = &[
    ("SESSION_TTL_SECS", "0"),
    ("SESSION_TTL_SECS", "31536001"),
    ("SESSION_TTL_SECS", "999999999999"),
    ("SESSION_TTL_SECS", "-1"),
    ("SESSION_MAX_LIFETIME_SECS", "0"),
    ("SESSION_MAX_LIFETIME_SECS", "31536001"),
    ("LONG_SESSION_TTL_SECS", "0"),
    ("LONG_SESSION_TTL_SECS", "31536001"),
    ("LONG_SESSION_MAX_LIFETIME_SECS", "0"),
    ("LONG_SESSION_MAX_LIFETIME_SECS", "31536001"),
    ("REAUTH_WARNING_SECS", "0"),
    ("REAUTH_WARNING_SECS", "31536001"),
    ("REVALIDATE_INTERVAL_SECS", "0"),
    ("REVALIDATE_INTERVAL_SECS", "86401"),
    ("LOGIN_MAX_FAILURES", "0"),
    ("LOGIN_MAX_FAILURES", "1000001"),
    ("LOGIN_WINDOW_SECS", "0"),
    ("LOGIN_WINDOW_SECS", "86401"),
    ("MAX_CONNECTIONS", "0"),
    ("MAX_CONNECTIONS", "10000001"),
    ("MAX_PENDING_UPGRADES", "0"),
    ("MAX_PENDING_UPGRADES", "10000001"),
    ("UPGRADE_RETRY_AFTER_MAX_SECS", "0"),
    ("UPGRADE_RETRY_AFTER_MAX_SECS", "3601"),
    ("MESSAGE_RATE_PER_SEC", "0"),
    ("MESSAGE_RATE_PER_SEC", "-1"),
    ("MESSAGE_RATE_PER_SEC", "NaN"),
    ("MESSAGE_RATE_PER_SEC", "inf"),
    ("MESSAGE_RATE_PER_SEC", "10001"),
    ("MESSAGE_BURST", "0"),
    ("MESSAGE_BURST", "100001"),
    ("HISTORY_MAX_LEN", "0"),
    ("HISTORY_MAX_LEN", "100000001"),
    ("HISTORY_PAGE_MAX", "0"),
    ("HISTORY_PAGE_MAX", "1001"),
    ("MENTION_INBOX_LEN", "0"),
    ("MENTION_INBOX_LEN", "10001"),
    ("SEND_DEDUPE_SECS", "0"),
    ("SEND_DEDUPE_SECS", "86401"),
    ("REGISTER_MAX_PER_ADDRESS", "0"),
    ("REGISTER_WINDOW_SECS", "0"),
    ("REGISTER_WINDOW_SECS", "86401"),
    ("REGISTER_MAX_SUCCESSES_PER_ADDRESS", "0"),
    ("INVITES_PER_USER_PER_DAY", "0"),
    ("INVITES_PER_USER_PER_DAY", "1001"),
    ("MAX_SOCKETS_PER_USER", "0"),
    ("MAX_SOCKETS_PER_SESSION", "0"),
    ("USER_MESSAGE_RATE_PER_SEC", "0"),
    ("USER_MESSAGE_RATE_PER_SEC", "NaN"),
    ("USER_MESSAGE_BURST", "0"),
    ("ROOMS_PER_USER_PER_HOUR", "0"),
    ("MAX_ROOM_MEMBERS", "1"),
    ("MAX_ROOM_MEMBERS", "100001"),
    ("MAX_PRIVATE_ROOMS_PER_USER", "0"),
    ("DIRECT_PER_USER_PER_HOUR", "0"),
    ("ROOM_TTL_SECS", "0"),
    ("ROOM_TTL_SECS", "31536001"),
    ("HTTP_IDLE_TIMEOUT_SECS", "0"),
    ("HTTP_HEADER_TIMEOUT_SECS", "0"),
    ("HTTP_REQUEST_TIMEOUT_SECS", "3601"),
    ("TLS_HANDSHAKE_TIMEOUT_SECS", "0"),
    ("MAX_OPEN_CONNECTIONS", "0"),
    ("WS_PING_INTERVAL_SECS", "0"),
    ("WS_PING_INTERVAL_SECS", "3601"),
    ("WS_IDLE_TIMEOUT_SECS", "0"),
    ("WS_IDLE_TIMEOUT_SECS", "86401"),
    ("PRESENCE_TTL_SECS", "2"),
    ("PRESENCE_TTL_SECS", "86401"),
    ("SHUTDOWN_GRACE_SECS", "3601"),
    ("REDIS_WAIT_REPLICAS", "17"),
    ("REDIS_WAIT_REPLICAS", "-1"),
    ("REDIS_WAIT_TIMEOUT_MS", "0"),
    ("REDIS_WAIT_TIMEOUT_MS", "1501"),
    ("SHUTDOWN_DRAIN_SECS", "3601"),
    ("REPLAY_READ_BUDGET_BYTES", "0"),
    ("REPLAY_READ_BUDGET_BYTES", "1073741825"),
];

#[test]
fn every_number_out_of_range_is_refused_naming_the_variable_and_the_range() {
    for (name, value) in OUT_OF_RANGE {
        let err = match config(&[(name, value)]) {
            Ok(_) => panic!("{name}={value} was accepted"),
            Err(err) => err,
        };
        assert_eq!(err.name, *name, "{name}={value}: {err}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("invalid {name}={value:?}: ")), "{text}");
        assert!(text.contains("between") || text.contains("above"), "says what is accepted: {text}");
    }
    let err = config(&[("SESSION_TTL_SECS", "999999999999")]).unwrap_err();
    assert_eq!(err.to_string(), r#"invalid SESSION_TTL_SECS="999999999999": must be between 1 and 31536000"#);
}

#[test]
fn the_ends_of_each_range_are_accepted() {
    let year = "31536000";
    let c = config(&[
        ("SESSION_TTL_SECS", year),
        ("SESSION_MAX_LIFETIME_SECS", year),
        ("LOGIN_MAX_FAILURES", "1000000"),
        ("LOGIN_WINDOW_SECS", "86400"),
        ("MAX_CONNECTIONS", "10000000"),
        ("MAX_PENDING_UPGRADES", "10000000"),
        ("UPGRADE_RETRY_AFTER_MAX_SECS", "3600"),
        ("MESSAGE_RATE_PER_SEC", "10000"),
        ("MESSAGE_BURST", "100000"),
        ("HISTORY_MAX_LEN", "100000000"),
        ("HISTORY_PAGE_MAX", "1000"),
        ("MENTION_INBOX_LEN", "10000"),
        ("SEND_DEDUPE_SECS", "86400"),
        ("REVALIDATE_INTERVAL_SECS", "86400"),
        ("WS_PING_INTERVAL_SECS", "3600"),
        ("WS_IDLE_TIMEOUT_SECS", "86400"),
        ("PRESENCE_TTL_SECS", "86400"),
        ("SHUTDOWN_GRACE_SECS", "3600"),
    ])
    .unwrap();
    assert_eq!(c.sessions.ttl, Duration::from_secs(31_536_000));
    let c = config(&[
        ("SESSION_TTL_SECS", "1"),
        ("SESSION_MAX_LIFETIME_SECS", "1"),
        ("LOGIN_MAX_FAILURES", "1"),
        ("MAX_CONNECTIONS", "1"),
        ("MAX_PENDING_UPGRADES", "1"),
        ("UPGRADE_RETRY_AFTER_MAX_SECS", "1"),
        ("MESSAGE_RATE_PER_SEC", "0.01"),
        ("MESSAGE_BURST", "1"),
        ("HISTORY_MAX_LEN", "1"),
        ("HISTORY_PAGE_MAX", "1"),
        ("MENTION_INBOX_LEN", "1"),
        ("PRESENCE_TTL_SECS", "3"),
        ("SHUTDOWN_GRACE_SECS", "0"),
    ])
    .unwrap();
    assert_eq!(c.sockets.max_connections, 1);
}

#[test]
fn a_shorter_session_ttl_alone_shortens_the_reauth_warning_to_half_of_it() {
    let c = config(&[("SESSION_TTL_SECS", "30")]).unwrap();
    assert_eq!(c.sessions.reauth_warning, Duration::from_secs(15));
    let c = config(&[("SESSION_TTL_SECS", "121")]).unwrap();
    assert_eq!(c.sessions.reauth_warning, Duration::from_secs(60), "never more than 60 s by default");
    // Half, exactly: a 1-second TTL is warned 500 ms before its deadline.
    let c = config(&[("SESSION_TTL_SECS", "1")]).unwrap();
    assert_eq!(c.sessions.reauth_warning, Duration::from_millis(500));
    let c = config(&[("SESSION_TTL_SECS", "3")]).unwrap();
    assert_eq!(c.sessions.reauth_warning, Duration::from_millis(1500));
}

#[test]
fn an_explicit_reauth_warning_not_below_the_shortest_lifetime_is_refused_naming_both() {
    for warning in ["30", "31", "600"] {
        let err = config(&[("SESSION_TTL_SECS", "30"), ("REAUTH_WARNING_SECS", warning)]).unwrap_err();
        assert_eq!(err.name, "REAUTH_WARNING_SECS");
        let text = err.to_string();
        assert!(text.contains("REAUTH_WARNING_SECS") && text.contains("SESSION_TTL_SECS"), "{text}");
    }
    // Just below is the operator's call.
    let c = config(&[("SESSION_TTL_SECS", "30"), ("REAUTH_WARNING_SECS", "29")]).unwrap();
    assert_eq!(c.sessions.reauth_warning, Duration::from_secs(29));
    // With the default TTLs, an explicit warning above the default is fine...
    let c = config(&[("REAUTH_WARNING_SECS", "299")]).unwrap();
    assert_eq!(c.sessions.reauth_warning, Duration::from_secs(299));
    // ...up to the shortest of them, the access token's (300 s).
    let err = config(&[("REAUTH_WARNING_SECS", "300")]).unwrap_err();
    assert!(err.to_string().contains("ACCESS_TOKEN_TTL_SECS=300"), "{err}");
    let c = config(&[("ACCESS_TOKEN_TTL_SECS", "20")]).unwrap();
    assert_eq!(c.sessions.reauth_warning, Duration::from_secs(10), "half the shorter token lifetime");
}

#[test]
fn plain_http_beyond_loopback_needs_an_https_origin_or_an_explicit_opt_in() {
    let tls = [("TLS_CERT", "/c.pem"), ("TLS_KEY", "/k.pem")];
    /// LISTEN_ADDR, TLS, PUBLIC_ORIGIN, ALLOW_INSECURE_HTTP, and whether it starts.
    type Case = (&'static str, bool, Option<&'static str>, Option<&'static str>, bool);
    let cases: &[Case] = &[
        ("127.0.0.1:8080", false, None, None, true),
        ("127.0.0.1:8080", false, Some("http://127.0.0.1:8080"), None, true),
        ("[::1]:8080", false, None, None, true),
        ("127.0.0.1:8080", true, None, None, true),
        ("0.0.0.0:8080", false, None, None, false),
        ("0.0.0.0:8080", false, Some("http://chat.example.com"), None, false),
        ("0.0.0.0:8080", false, Some("http://chat.example.com"), Some("false"), false),
        ("192.0.2.7:8080", false, None, None, false),
        ("[::]:8080", false, None, None, false),
        ("[::ffff:10.0.0.1]:8080", false, None, None, false),
        ("0.0.0.0:8080", true, None, None, true),
        ("0.0.0.0:8080", true, Some("http://chat.example.com"), None, true),
        ("0.0.0.0:8080", false, Some("https://chat.example.com"), None, true),
        ("[::]:8080", false, Some("https://chat.example.com"), None, true),
        ("0.0.0.0:8080", false, None, Some("true"), true),
        ("0.0.0.0:8080", false, Some("http://chat.example.com"), Some("true"), true),
        ("[::ffff:127.0.0.1]:8080", false, None, None, true),
    ];
    for &(addr, with_tls, origin, allow, starts) in cases {
        let mut vars = vec![("LISTEN_ADDR", addr)];
        if with_tls {
            vars.extend(tls);
        }
        if let Some(origin) = origin {
            vars.push(("PUBLIC_ORIGIN", origin));
        }
        if let Some(allow) = allow {
            vars.push(("ALLOW_INSECURE_HTTP", allow));
        }
        let case = format!("{addr} tls={with_tls} origin={origin:?} allow={allow:?}");
        match config(&vars) {
            Ok(_) => assert!(starts, "{case} started"),
            Err(err) => {
                assert!(!starts, "{case} refused: {err}");
                assert_eq!(err.name, "LISTEN_ADDR", "{case}");
                let text = err.to_string();
                for needed in ["clear text", "PUBLIC_ORIGIN=https://", "ALLOW_INSECURE_HTTP=true"] {
                    assert!(text.contains(needed), "{case}: {text} lacks {needed:?}");
                }
            }
        }
    }
}
