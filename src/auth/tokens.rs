//! Access tokens for clients that are not browsers (docs/protocol.md §5):
//! short-lived EdDSA JWTs, signed with one Ed25519 key and verified against
//! it and any previous keys still accepted, chosen by `kid`.
//!
//! Verification is strict: the algorithm is fixed (EdDSA; `none`, HS256
//! signed with the public key and everything else are refused before any
//! signature is looked at), `typ` must be `at+jwt`, `iss` this service,
//! `aud` `palaver`, and every claim palaver reads is required. What palaver
//! never issues is held to its standard all the same: a `crit` header names
//! extensions palaver does not understand (refused, RFC 7515 §4.1.11), and a
//! token whose `nbf` or `iat` lies ahead of the clock is not valid yet (RFC
//! 7519 §4.1.5; [`CLOCK_LEEWAY`] allowed for skew). It needs no store:
//! whether the session still lives is checked separately (one read).
//!
//! A client presents the same token for every socket it opens until the
//! token is refreshed, and an Ed25519 verification costs more than the rest
//! of an upgrade. Tokens that verified are remembered (by their SHA-256,
//! with their claims, until they expire; at most [`VERIFIED_CACHE`]), so
//! the signature of one token is checked once per instance. A key is only
//! ever added, or dropped once every token it signed has expired, so
//! nothing can make a remembered token wrong before its `exp`.
//!
//! Without `TOKEN_SIGNING_KEY` the signing key is generated and shared
//! through the store, as the refresh-token key always is. A store may lose
//! them (restarted empty) while instances run, and an instance started
//! afterwards would generate others: every instance holds its keys against
//! the store's every [`KEY_SYNC_INTERVAL`] ([`KeyKeeper`]), writes its own
//! back when they are gone (the first to write wins) and otherwise adopts
//! the store's, so the group converges on one key; a key replaced stays
//! accepted, on every instance, until what it signed or derived expires.

use std::{
    collections::{hash_map::Entry, HashMap},
    fmt,
    path::Path,
    sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::{
    digest, hmac,
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use rustls::pki_types::{pem::PemObject, PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};

use tokio::sync::watch;

use super::refresh::Secret;
use crate::{
    backend::{Candidate, SharedSecret, StoreResult, TokenStore},
    clock::UnixMillis,
    model::{User, UserId},
};

/// The `typ` of an access token (RFC 9068).
pub(crate) const TOKEN_TYPE: &str = "at+jwt";
/// The `aud` every access token names.
pub(crate) const AUDIENCE: &str = "palaver";

/// How far ahead of this instance's clock a token's `nbf` and `iat` may
/// be: the issuing instance's clock may run a little ahead, and a token it
/// has just issued must work here at once. `exp` has no leeway (an
/// instance whose clock runs ahead refuses tokens early, never late).
const CLOCK_LEEWAY: i64 = 30;

/// The token of an `Authorization` header's value when its scheme is
/// `Bearer` (in any case): how a client presents an access token, to the
/// API and to the upgrade alike (docs/protocol.md §5.7).
pub(crate) fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The claims of an access token. All are required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user's id.
    pub sub: UserId,
    /// The user's name.
    pub name: String,
    /// Names the token session (not its store key, never a cookie value).
    pub sid: String,
    /// Unix seconds.
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

impl Claims {
    pub(crate) fn expires_at(&self) -> UnixMillis {
        UnixMillis::from_secs(self.exp)
    }
}

/// A token's payload as verification reads it: the claims, and `nbf`,
/// which palaver never issues but holds a token to when it is there.
#[derive(Deserialize)]
struct Payload {
    #[serde(flatten)]
    claims: Claims,
    nbf: Option<i64>,
}

/// Why a token is refused. Logged, never shown in detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("not a JWT, or not one of ours: {0}")]
    Malformed(String),
    #[error("typ is not {TOKEN_TYPE}")]
    WrongType,
    #[error("signed by no key we know")]
    UnknownKey,
    #[error("refused: {0}")]
    Invalid(String),
}

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {name} {path}: {reason}")]
    Read { name: &'static str, path: String, reason: String },
    #[error("{name} {path} is not an Ed25519 key: {reason}")]
    NotEd25519 { name: &'static str, path: String, reason: String },
}

/// How many verified tokens an instance remembers.
pub(crate) const VERIFIED_CACHE: usize = 4096;

type Digest = [u8; 32];

fn digest_of(token: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// The names the generated signing key and the refresh-token key are
/// shared under in the store.
const SIGNING_SECRET: &str = "token-signing-key";
const REFRESH_SECRET: &str = "refresh-key";

/// How often an instance holds its shared keys against the store's
/// ([`TokenKeys::share`]): after the store has lost them, instances may
/// sign and derive with different keys for about this long.
pub(crate) const KEY_SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// The signing key and every key tokens are verified with.
pub(crate) struct TokenKeys {
    ring: RwLock<KeyRing>,
    /// Whether the signing key is the generated one shared through the
    /// store (no `TOKEN_SIGNING_KEY`): then the store's is followed.
    shared_signing: bool,
    validation: Validation,
    issuer: String,
    ttl: Duration,
    /// Tokens that verified, by digest (see the module's documentation).
    verified: Mutex<HashMap<Digest, Claims>>,
    /// At most this many ([`VERIFIED_CACHE`]).
    verified_cap: usize,
}

/// The keys in force. Replaced only as the store says ([`TokenKeys::share`]),
/// and a key replaced stays accepted until what it signed or derived has
/// expired.
struct KeyRing {
    signing: Signing,
    /// By `kid`: the signing key's and `TOKEN_PREVIOUS_KEYS` for good
    /// (`None`); keys replaced while instances ran until the last token they
    /// signed expires.
    verifying: HashMap<String, (DecodingKey, Option<UnixMillis>)>,
    /// Derives a refresh token's successor (see `refresh`).
    refresh: RefreshKey,
    /// Refresh keys replaced lately, until the reuse grace of the last
    /// successor they derived is over.
    refresh_retired: Vec<(RefreshKey, UnixMillis)>,
}

/// The key tokens are signed with.
struct Signing {
    key: EncodingKey,
    kid: String,
    pkcs8: Vec<u8>,
    /// The raw public key.
    public: Vec<u8>,
}

impl Signing {
    fn new(pkcs8: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|err| err.to_string())?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(Self { key: EncodingKey::from_ed_der(pkcs8), kid: key_id(&public), pkcs8: pkcs8.to_vec(), public })
    }
}

#[derive(Clone)]
struct RefreshKey {
    secret: Vec<u8>,
    key: hmac::Key,
}

impl RefreshKey {
    fn new(secret: &[u8]) -> Self {
        Self { secret: secret.to_vec(), key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys").field("kid", &self.kid()).field("signing", &"[redacted]").finish_non_exhaustive()
    }
}

/// A key id: the first 16 characters of the base64url SHA-256 of the raw
/// public key. Stable across restarts and instances for the same key.
fn key_id(public: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, public))[..16].to_owned()
}

/// A new Ed25519 private key, as PKCS#8 DER.
pub fn generate_signing_key() -> Vec<u8> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("the system has randomness").as_ref().to_vec()
}

/// The raw 32-byte public key of an Ed25519 SubjectPublicKeyInfo.
fn raw_public_key(spki: &[u8]) -> Option<&[u8]> {
    // SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (32 bytes) }
    const PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    (spki.len() == 44 && spki[..12] == PREFIX).then(|| &spki[12..])
}

/// Reads a PKCS#8 PEM private key file.
pub(crate) fn read_signing_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|err| KeyError::Read {
        name: "TOKEN_SIGNING_KEY",
        path: path.display().to_string(),
        reason: err.to_string(),
    })?;
    Ok(der.secret_pkcs8_der().to_vec())
}

/// Reads a SubjectPublicKeyInfo PEM public key file: its raw key.
pub(crate) fn read_public_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let der = SubjectPublicKeyInfoDer::from_pem_file(path).map_err(|err| KeyError::Read {
        name: "TOKEN_PREVIOUS_KEYS",
        path: path.display().to_string(),
        reason: err.to_string(),
    })?;
    raw_public_key(der.as_ref()).map(<[u8]>::to_vec).ok_or_else(|| KeyError::NotEd25519 {
        name: "TOKEN_PREVIOUS_KEYS",
        path: path.display().to_string(),
        reason: "expected an Ed25519 SubjectPublicKeyInfo".into(),
    })
}

impl TokenKeys {
    /// The keys the configuration names: `TOKEN_SIGNING_KEY` and
    /// `TOKEN_PREVIOUS_KEYS`, or, with no signing key configured, one
    /// generated by the first instance and shared through the store.
    pub(crate) async fn load(
        signing: Option<&Path>,
        previous: &[std::path::PathBuf],
        store: &dyn TokenStore,
        issuer: &str,
        issuers: &[&str],
        ttl: Duration,
    ) -> Result<TokenKeys, KeyError> {
        let now = UnixMillis::now();
        let configured = signing.map(read_signing_key).transpose()?;
        let generated = configured.is_none().then(generate_signing_key);
        // Shared by every instance whatever their signing keys (a rolling
        // rotation): a replayed refresh token gets the same successor on any.
        let mut refresh = [0u8; 32];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut refresh).expect("the system has randomness");
        let mut candidates = vec![Candidate { name: REFRESH_SECRET, value: &refresh, retire: None }];
        candidates.extend(generated.as_deref().map(|value| Candidate { name: SIGNING_SECRET, value, retire: None }));
        let mut shared = store.share_secrets(&candidates, now).await.map_err(|err| KeyError::Read {
            name: "the shared keys",
            path: "(the store)".into(),
            reason: err.to_string(),
        })?;
        let (refresh, generated) = (shared.remove(0), shared.pop());
        let pkcs8 = match configured {
            Some(pkcs8) => pkcs8,
            None => {
                tracing::warn!(
                    "TOKEN_SIGNING_KEY is not set: access tokens are signed with a GENERATED key, shared by every \
                     instance through the store. Fine for trying palaver; in production set TOKEN_SIGNING_KEY to a \
                     PEM file (openssl genpkey -algorithm ed25519) so tokens survive a store that loses its data."
                );
                generated.as_ref().expect("one answer per candidate").current.clone()
            }
        };
        let previous = previous.iter().map(|path| read_public_key(path)).collect::<Result<Vec<_>, _>>()?;
        let path = signing.map(|p| p.display().to_string()).unwrap_or_else(|| "(generated)".into());
        let mut keys = TokenKeys::new(&pkcs8, &previous, issuer, issuers, ttl, &refresh.current)
            .map_err(|reason| KeyError::NotEd25519 { name: "TOKEN_SIGNING_KEY", path, reason })?;
        keys.shared_signing = generated.is_some();
        keys.follow(refresh, generated, now, now);
        let kid = keys.kid();
        tracing::info!(kid, previous = previous.len(), "access tokens signed with key {kid}");
        Ok(keys)
    }

    /// Keys from a PKCS#8 Ed25519 private key (DER) and the raw public keys
    /// of earlier signing keys. Tokens are issued by `issuer` (this
    /// instance's public origin) and accepted from any of `issuers` (every
    /// origin of the group: instances behind one balancer share a public
    /// origin; reached at different ones, they list each other in
    /// `ALLOWED_ORIGINS`, as for cookies).
    pub(crate) fn new(
        signing_pkcs8: &[u8],
        previous: &[Vec<u8>],
        issuer: &str,
        issuers: &[&str],
        ttl: Duration,
        refresh_secret: &[u8],
    ) -> Result<Self, String> {
        let signing = Signing::new(signing_pkcs8)?;
        let mut verifying = HashMap::new();
        verifying.insert(signing.kid.clone(), (DecodingKey::from_ed_der(&signing.public), None));
        for key in previous {
            verifying.insert(key_id(key), (DecodingKey::from_ed_der(key), None));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        let mut accepted: Vec<&str> = issuers.to_vec();
        accepted.push(issuer);
        validation.set_issuer(&accepted);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Instances share one clock source in practice (NTP); no grace.
        validation.leeway = 0;
        let ring =
            KeyRing { signing, verifying, refresh: RefreshKey::new(refresh_secret), refresh_retired: Vec::new() };
        Ok(Self {
            ring: RwLock::new(ring),
            shared_signing: false,
            validation,
            issuer: issuer.to_owned(),
            ttl,
            verified: Mutex::default(),
            verified_cap: VERIFIED_CACHE,
        })
    }

    fn ring(&self) -> RwLockReadGuard<'_, KeyRing> {
        self.ring.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn ring_mut(&self) -> RwLockWriteGuard<'_, KeyRing> {
        self.ring.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id of the key tokens are signed with now.
    pub(crate) fn kid(&self) -> String {
        self.ring().signing.kid.clone()
    }

    /// The successor of a refresh token's secret, derived with the refresh
    /// key in force.
    pub(super) fn successor(&self, secret: &Secret) -> Secret {
        secret.successor(&self.ring().refresh.key)
    }

    /// The successor a spent refresh token was rotated for, if it is the
    /// session's `current` one (its hash): derived with the refresh key in
    /// force, or with one replaced lately (the instance that rotated it may
    /// have held another while the store had lost the shared one).
    pub(super) fn replayed_successor(&self, spent: &Secret, current: &str) -> Option<Secret> {
        let ring = self.ring();
        std::iter::once(&ring.refresh)
            .chain(ring.refresh_retired.iter().map(|(key, _)| key))
            .map(|key| spent.successor(&key.key))
            .find(|next| next.hash() == current)
    }

    /// Holds this instance's shared keys against the store's, at `now`
    /// (every [`KEY_SYNC_INTERVAL`], see [`KeyKeeper`]). When the store has
    /// lost them (restarted empty), this instance's are written back, unless
    /// another instance's got there first: then that one is adopted, and
    /// this instance's stays accepted (here and, through the store, on
    /// every instance) until what it signed expires, or for `refresh_grace`
    /// for a refresh key. The configured `TOKEN_SIGNING_KEY` is never
    /// replaced.
    pub(crate) async fn share(
        &self,
        store: &dyn TokenStore,
        refresh_grace: Duration,
        now: UnixMillis,
    ) -> StoreResult<()> {
        let (refresh, signing) = {
            let ring = self.ring();
            (
                ring.refresh.secret.clone(),
                self.shared_signing.then(|| (ring.signing.pkcs8.clone(), ring.signing.public.clone())),
            )
        };
        let until = now + refresh_grace;
        // One round trip: an instance sees another's keys retired together.
        let mut candidates = vec![Candidate { name: REFRESH_SECRET, value: &refresh, retire: Some((&refresh, until)) }];
        candidates.extend(signing.as_ref().map(|(pkcs8, public)| Candidate {
            name: SIGNING_SECRET,
            value: pkcs8,
            retire: Some((public, now + self.ttl)),
        }));
        let mut shared = store.share_secrets(&candidates, now).await?;
        let (refresh, signing) = (shared.remove(0), shared.pop());
        self.follow(refresh, signing, until, now);
        Ok(())
    }

    /// Takes what the store holds: its refresh key (one replaced here is
    /// kept until `refresh_until`) and, when shared, its signing key.
    fn follow(&self, refresh: SharedSecret, signing: Option<SharedSecret>, refresh_until: UnixMillis, now: UnixMillis) {
        if let Some(signing) = signing {
            self.follow_signing(signing, now);
        }
        self.follow_refresh(refresh, refresh_until, now);
    }

    /// Signs with the store's generated key, and accepts the keys it keeps
    /// as retired; a key replaced here is accepted as long as the tokens
    /// it signed until `now` live.
    fn follow_signing(&self, shared: SharedSecret, now: UnixMillis) {
        let mut ring = self.ring_mut();
        if shared.current != ring.signing.pkcs8 {
            match Signing::new(&shared.current) {
                Ok(next) => {
                    let replaced = std::mem::replace(&mut ring.signing, next);
                    if let Some((_, until)) = ring.verifying.get_mut(&replaced.kid) {
                        *until = Some(now + self.ttl);
                    }
                    let (kid, public) = (ring.signing.kid.clone(), DecodingKey::from_ed_der(&ring.signing.public));
                    ring.verifying.insert(kid, (public, None));
                    tracing::warn!(
                        kid = ring.signing.kid,
                        replaced = replaced.kid,
                        "the store holds another generated signing key (it lost the shared one, and another instance \
                         wrote its own back first): tokens are signed with it from now on; those signed with the \
                         replaced key are accepted until they expire"
                    );
                }
                Err(reason) => tracing::error!(%reason, "the store's generated signing key is not an Ed25519 key"),
            }
        }
        for (public, until) in shared.retired.iter().filter(|(public, _)| public.len() == 32) {
            match ring.verifying.entry(key_id(public)) {
                Entry::Occupied(mut known) => {
                    if let (_, Some(at)) = known.get_mut() {
                        *at = (*at).max(*until);
                    }
                }
                Entry::Vacant(new) => {
                    new.insert((DecodingKey::from_ed_der(public), Some(*until)));
                }
            }
        }
        ring.verifying.retain(|_, (_, until)| until.is_none_or(|until| until > now));
    }

    /// Derives with the store's refresh key, and keeps the retired ones it
    /// holds; a key replaced here is kept until `until`.
    fn follow_refresh(&self, shared: SharedSecret, until: UnixMillis, now: UnixMillis) {
        let mut ring = self.ring_mut();
        if shared.current != ring.refresh.secret {
            let replaced = std::mem::replace(&mut ring.refresh, RefreshKey::new(&shared.current));
            ring.refresh_retired.push((replaced, until));
            tracing::warn!(
                "the store holds another refresh-token key (it lost the shared one): derived with it from now on"
            );
        }
        for (secret, until) in shared.retired.iter().filter(|(secret, _)| *secret != shared.current) {
            match ring.refresh_retired.iter_mut().find(|(key, _)| key.secret == *secret) {
                Some((_, at)) => *at = (*at).max(*until),
                None => ring.refresh_retired.push((RefreshKey::new(secret), *until)),
            }
        }
        ring.refresh_retired.retain(|(_, until)| *until > now);
    }

    /// A new access token for `user` in session `sid`; and when it expires.
    pub(crate) fn issue(&self, user: &User, sid: &str, now: UnixMillis) -> (String, UnixMillis) {
        let iat = now.as_secs();
        let exp = iat + self.ttl.as_secs() as i64;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: AUDIENCE.into(),
            sub: user.id,
            name: user.name.clone(),
            sid: sid.to_owned(),
            iat,
            exp,
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        let ring = self.ring();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(TOKEN_TYPE.into());
        header.kid = Some(ring.signing.kid.clone());
        let token = encode(&header, &claims, &ring.signing.key).expect("signing with a valid Ed25519 key cannot fail");
        (token, UnixMillis::from_secs(exp))
    }

    /// Checks a token's form, signature and claims (not its session).
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, UnixMillis::now().as_secs())
    }

    /// [`TokenKeys::verify`] at `now` (Unix seconds) for a remembered token.
    fn verify_at(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let digest = digest_of(token);
        if let Some(claims) = self.remembered().get(&digest).cloned() {
            return match now <= claims.exp {
                true => Ok(claims),
                false => Err(TokenError::Invalid("ExpiredSignature".into())),
            };
        }
        let claims = self.verify_signed(token, now)?;
        let mut remembered = self.remembered();
        if remembered.len() >= self.verified_cap {
            remembered.retain(|_, c| now <= c.exp);
            if remembered.len() >= self.verified_cap {
                remembered.clear();
            }
        }
        remembered.insert(digest, claims.clone());
        Ok(claims)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Claims>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The signature and claims, at `now` (Unix seconds) for the times
    /// palaver checks itself (`exp` is checked by `jsonwebtoken`).
    fn verify_signed(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let header = decode_header(token).map_err(|err| TokenError::Malformed(err.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!("algorithm {:?}", header.alg)));
        }
        if header.typ.as_deref() != Some(TOKEN_TYPE) {
            return Err(TokenError::WrongType);
        }
        // palaver understands no JWS extension, so any critical one is
        // not understood (and `crit` may not be empty, RFC 7515 §4.1.11).
        if let Some(crit) = &header.crit {
            return Err(TokenError::Invalid(format!("critical header parameters {crit:?}")));
        }
        let ring = self.ring();
        let (key, _) = header.kid.as_deref().and_then(|kid| ring.verifying.get(kid)).ok_or(TokenError::UnknownKey)?;
        let Payload { claims, nbf } =
            decode::<Payload>(token, key, &self.validation).map_err(|err| TokenError::Invalid(err.to_string()))?.claims;
        drop(ring);
        if nbf.is_some_and(|nbf| nbf > now + CLOCK_LEEWAY) {
            return Err(TokenError::Invalid("ImmatureSignature (nbf)".into()));
        }
        if claims.iat > now + CLOCK_LEEWAY {
            return Err(TokenError::Invalid("issued in the future (iat)".into()));
        }
        Ok(claims)
    }
}

/// Holds an instance's shared keys against the store's, every
/// [`KEY_SYNC_INTERVAL`] until `stop` ([`TokenKeys::share`]).
pub(crate) struct KeyKeeper {
    pub keys: Arc<TokenKeys>,
    pub store: Arc<dyn TokenStore>,
    /// `REFRESH_REUSE_GRACE_SECS`: how long a replaced refresh key derives.
    pub refresh_grace: Duration,
}

impl KeyKeeper {
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(KEY_SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset(); // loaded just now
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(err) = self.keys.share(&*self.store, self.refresh_grace, UnixMillis::now()).await {
                tracing::debug!(%err, "shared keys not checked: store unavailable");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;

    pub(crate) const ISSUER: &str = "https://chat.example.com";

    pub(crate) fn keys() -> TokenKeys {
        TokenKeys::new(&generate_signing_key(), &[], ISSUER, &[], Duration::from_secs(300), b"test refresh key")
            .unwrap()
    }

    #[test]
    fn a_bearer_token_is_read_from_its_scheme_in_any_case_and_nothing_else_is() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        for other in ["Basic abc", "Bearer", "Bearerabc", "", "Token abc"] {
            assert_eq!(bearer(other), None, "{other:?}");
        }
    }

    fn alice() -> User {
        User { id: UserId::new_v4(), name: "alice".into() }
    }

    /// A token with these claims and header, signed by `key`.
    fn forge(header: Header, claims: &serde_json::Value, key: &EncodingKey) -> String {
        encode(&header, claims, key).unwrap()
    }

    fn claims_json(keys: &TokenKeys, user: &User, exp: i64) -> serde_json::Value {
        serde_json::json!({
            "iss": keys.issuer, "aud": AUDIENCE, "sub": user.id, "name": user.name, "sid": "s1",
            "iat": exp - 300, "exp": exp, "jti": "j1",
        })
    }

    #[test]
    fn an_issued_token_verifies_and_carries_its_claims() {
        let keys = keys();
        let user = alice();
        let now = UnixMillis::now();
        let (token, exp) = keys.issue(&user, "sid-1", now);
        let claims = keys.verify(&token).expect("a fresh token verifies");
        assert_eq!((claims.sub, claims.name.as_str(), claims.sid.as_str()), (user.id, "alice", "sid-1"));
        assert_eq!(claims.expires_at(), exp);
        assert_eq!(exp, now.floor_secs() + Duration::from_secs(300));
        let header = decode_header(&token).unwrap();
        assert_eq!((header.typ.as_deref(), header.kid.as_deref()), (Some("at+jwt"), Some(keys.kid().as_str())));
    }

    #[test]
    fn verification_really_checks_the_signature() {
        // The crypto backend is really there: a valid token passes, and the
        // same token with one signature bit flipped does not.
        let keys = keys();
        let (token, _) = keys.issue(&alice(), "s", UnixMillis::now());
        let (head, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bytes[0] ^= 1;
        let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert!(matches!(keys.verify(&tampered), Err(TokenError::Invalid(_))));
        // A body changed under the original signature fails too.
        let (header, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims_json(&keys, &alice(), 4_000_000_000)).unwrap());
        assert!(keys.verify(&format!("{header}.{other}.{signature}")).is_err());
    }

    #[test]
    fn every_other_algorithm_is_refused() {
        let keys = keys();
        let user = alice();
        let exp = UnixMillis::now().as_secs() + 300;
        let claims = claims_json(&keys, &user, exp);
        // alg none: a header and body with an empty signature.
        let none_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{}"}}"#, keys.kid()));
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        assert!(keys.verify(&format!("{none_header}.{body}.")).is_err(), "alg none");
        // HS256 keyed with the public key (the classic confusion).
        let public = keys.ring().verifying[&keys.kid()].0.try_get_as_bytes().unwrap().to_vec();
        let mut hs = Header::new(Algorithm::HS256);
        hs.typ = Some(TOKEN_TYPE.into());
        hs.kid = Some(keys.kid());
        let confused = forge(hs, &claims, &EncodingKey::from_secret(&public));
        assert!(keys.verify(&confused).is_err(), "HS256 with the public key");
    }

    #[test]
    fn wrong_typ_aud_iss_kid_or_an_expired_token_is_refused() {
        let keys = keys();
        let user = alice();
        let exp = UnixMillis::now().as_secs() + 300;
        let signing = &keys.ring().signing.key.clone();
        let header = |typ: Option<&str>, kid: Option<&str>| {
            let mut h = Header::new(Algorithm::EdDSA);
            h.typ = typ.map(Into::into);
            h.kid = kid.map(Into::into);
            h
        };
        let kid = keys.kid();
        let kid = Some(kid.as_str());
        let good = forge(header(Some(TOKEN_TYPE), kid), &claims_json(&keys, &user, exp), signing);
        assert!(keys.verify(&good).is_ok(), "the forge itself makes valid tokens");
        assert_eq!(
            keys.verify(&forge(header(Some("JWT"), kid), &claims_json(&keys, &user, exp), signing)),
            Err(TokenError::WrongType)
        );
        assert_eq!(
            keys.verify(&forge(header(None, kid), &claims_json(&keys, &user, exp), signing)),
            Err(TokenError::WrongType)
        );
        assert_eq!(
            keys.verify(&forge(header(Some(TOKEN_TYPE), Some("nope")), &claims_json(&keys, &user, exp), signing)),
            Err(TokenError::UnknownKey)
        );
        let mut aud = claims_json(&keys, &user, exp);
        aud["aud"] = "someone-else".into();
        assert!(keys.verify(&forge(header(Some(TOKEN_TYPE), kid), &aud, signing)).is_err(), "aud");
        let mut iss = claims_json(&keys, &user, exp);
        iss["iss"] = "https://evil.example".into();
        assert!(keys.verify(&forge(header(Some(TOKEN_TYPE), kid), &iss, signing)).is_err(), "iss");
        // Another origin of the group issues tokens this instance accepts.
        let group = TokenKeys::new(
            &generate_signing_key(),
            &[],
            ISSUER,
            &["https://b.example.com"],
            Duration::from_secs(300),
            b"test refresh key",
        )
        .unwrap();
        let mut sibling = claims_json(&group, &user, exp);
        sibling["iss"] = "https://b.example.com".into();
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some(TOKEN_TYPE.into());
        h.kid = Some(group.kid());
        assert!(group.verify(&forge(h, &sibling, &group.ring().signing.key.clone())).is_ok(), "a sibling's iss");
        let expired = claims_json(&keys, &user, UnixMillis::now().as_secs() - 1);
        assert!(keys.verify(&forge(header(Some(TOKEN_TYPE), kid), &expired, signing)).is_err(), "expired");
        for claim in ["sid", "name", "iat", "jti", "sub", "exp", "iss", "aud"] {
            let mut missing = claims_json(&keys, &user, exp);
            missing.as_object_mut().unwrap().remove(claim);
            assert!(keys.verify(&forge(header(Some(TOKEN_TYPE), kid), &missing, signing)).is_err(), "no {claim}");
        }
    }

    #[test]
    fn a_crit_header_or_an_nbf_or_iat_ahead_of_the_clock_beyond_30_s_is_refused() {
        let keys = keys();
        let user = alice();
        let now = UnixMillis::now().as_secs();
        let header = || {
            let mut h = Header::new(Algorithm::EdDSA);
            h.typ = Some(TOKEN_TYPE.into());
            h.kid = Some(keys.kid());
            h
        };
        let verify = |header: Header, claims: &serde_json::Value| {
            keys.verify_at(&forge(header, claims, &keys.ring().signing.key.clone()), now).map(|c| c.jti)
        };
        let claims = claims_json(&keys, &user, now + 300);
        assert!(verify(header(), &claims).is_ok(), "the same token without them verifies");

        // Whatever it names, even nothing: palaver understands no extension.
        for crit in [vec!["b64"], vec!["exp"], vec!["x-palaver"], vec![]] {
            let mut critical = header();
            critical.crit = Some(crit.iter().map(|c| c.to_string()).collect());
            assert!(matches!(verify(critical, &claims), Err(TokenError::Invalid(_))), "crit {crit:?}");
        }
        for (nbf, accepted) in
            [(now - 600, true), (now, true), (now + 30, true), (now + 31, false), (now + 86_400, false)]
        {
            let mut with_nbf = claims.clone();
            with_nbf["nbf"] = nbf.into();
            assert_eq!(verify(header(), &with_nbf).is_ok(), accepted, "nbf now{:+}", nbf - now);
        }
        for (iat, accepted) in [(now - 600, true), (now + 30, true), (now + 31, false), (now + 86_400, false)] {
            let mut with_iat = claims.clone();
            with_iat["iat"] = iat.into();
            assert_eq!(verify(header(), &with_iat).is_ok(), accepted, "iat now{:+}", iat - now);
        }
        let mut fractional = claims.clone();
        fractional["nbf"] = serde_json::json!(now as f64 + 0.5);
        assert!(verify(header(), &fractional).is_err(), "an nbf that is not whole seconds is not ours");
    }

    #[test]
    fn a_previous_key_is_accepted_by_kid_and_a_forgotten_one_is_not() {
        let old_pkcs8 = generate_signing_key();
        let old = TokenKeys::new(&old_pkcs8, &[], ISSUER, &[], Duration::from_secs(300), b"test refresh key").unwrap();
        let (token, _) = old.issue(&alice(), "s", UnixMillis::now());
        let old_public = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&old_pkcs8).unwrap().public_key().as_ref().to_vec();
        let rotated = TokenKeys::new(
            &generate_signing_key(),
            &[old_public],
            ISSUER,
            &[],
            Duration::from_secs(300),
            b"test refresh key",
        )
        .unwrap();
        assert!(rotated.verify(&token).is_ok(), "accepted during the rotation");
        let forgotten = keys();
        assert_eq!(forgotten.verify(&token), Err(TokenError::UnknownKey));
    }

    #[test]
    fn a_remembered_token_ends_at_its_exp_and_remembers_nothing_else() {
        let keys = keys();
        let (token, exp) = keys.issue(&alice(), "s", UnixMillis::now());
        let claims = keys.verify(&token).unwrap();
        assert_eq!(keys.remembered().len(), 1, "remembered once verified");
        assert_eq!(keys.verify_at(&token, exp.as_secs()), Ok(claims), "valid through its last second");
        assert!(matches!(keys.verify_at(&token, exp.as_secs() + 1), Err(TokenError::Invalid(_))), "then refused");
        // A tampered copy is another token: checked, and refused.
        let (head, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bytes[0] ^= 1;
        assert!(keys.verify(&format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes))).is_err());
        assert_eq!(keys.remembered().len(), 1, "a refused token is not remembered");
        // Bounded.
        let keys = TokenKeys { verified_cap: 4, ..keys };
        for i in 0..10 {
            let (token, _) = keys.issue(&alice(), &format!("s{i}"), UnixMillis::now());
            keys.verify(&token).unwrap();
            assert!((1..=4).contains(&keys.remembered().len()));
        }
    }

    /// The keys of an instance that generated its own and shared them
    /// through a store which has since lost them.
    fn shared_keys(refresh_secret: &[u8]) -> TokenKeys {
        let keys = TokenKeys::new(&generate_signing_key(), &[], ISSUER, &[], Duration::from_secs(300), refresh_secret)
            .unwrap();
        TokenKeys { shared_signing: true, ..keys }
    }

    #[tokio::test]
    async fn after_the_store_lost_the_shared_keys_every_instance_converges_on_the_first_written_back() {
        use crate::{auth::refresh::Secret, backend::memory::MemoryBackend, config::Config};
        let store = MemoryBackend::new(&Config::default().chat);
        let grace = Duration::from_secs(10);
        // `a` ran before the store lost everything; `c` started after, on the
        // empty store, and wrote its own keys first.
        let a = shared_keys(b"a's refresh key");
        let c = TokenKeys::load(None, &[], &store, ISSUER, &[], Duration::from_secs(300)).await.unwrap();
        let now = UnixMillis::now();
        let (from_a, _) = a.issue(&alice(), "s1", now);
        let (from_c, _) = c.issue(&alice(), "s2", now);
        assert_eq!(c.verify(&from_a), Err(TokenError::UnknownKey), "split, as the store left them");
        // A refresh rotated on `a` with its own refresh key.
        let spent = Secret::random();
        let rotated = a.successor(&spent);

        a.share(&store, grace, now).await.unwrap();
        c.share(&store, grace, now).await.unwrap();
        assert_eq!(a.kid(), c.kid(), "`a` signs with the key written back first");
        for (token, what) in [(&from_a, "a's, signed before"), (&from_c, "c's")] {
            assert!(a.verify(token).is_ok() && c.verify(token).is_ok(), "{what} accepted by both");
        }
        let (from_a_now, _) = a.issue(&alice(), "s3", now);
        assert!(c.verify(&from_a_now).is_ok());
        // The rotation `a` made is replayed with the same successor on either.
        for keys in [&a, &c] {
            assert_eq!(keys.replayed_successor(&spent, &rotated.hash()), Some(rotated.clone()));
            assert_eq!(keys.successor(&spent), c.successor(&spent), "one refresh key from now on");
        }

        // Once what they signed has expired, replaced keys go.
        let later = now + Duration::from_secs(301);
        c.share(&store, grace, later).await.unwrap();
        // (What `c` remembers of the token would expire with it at `later`.)
        c.remembered().clear();
        assert_eq!(c.verify(&from_a), Err(TokenError::UnknownKey));
        assert_eq!(c.replayed_successor(&spent, &rotated.hash()), None);
        assert!(c.verify(&from_c).is_ok(), "its own key stays");
    }

    #[tokio::test]
    async fn a_configured_signing_key_is_never_replaced_but_the_refresh_key_is_shared() {
        use crate::{backend::memory::MemoryBackend, config::Config};
        let store = MemoryBackend::new(&Config::default().chat);
        let first = shared_keys(b"the first refresh key");
        first.share(&store, Duration::from_secs(10), UnixMillis::now()).await.unwrap();
        let configured = keys();
        let kid = configured.kid();
        configured.share(&store, Duration::from_secs(10), UnixMillis::now()).await.unwrap();
        assert_eq!(configured.kid(), kid);
        let spent = crate::auth::refresh::Secret::random();
        assert_eq!(configured.successor(&spent), first.successor(&spent));
    }

    #[test]
    fn ed25519_public_keys_are_read_from_their_spki() {
        let pkcs8 = generate_signing_key();
        let raw = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).unwrap().public_key().as_ref().to_vec();
        let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        spki.extend_from_slice(&raw);
        assert_eq!(raw_public_key(&spki), Some(raw.as_slice()));
        assert_eq!(raw_public_key(&spki[1..]), None);
    }
}
