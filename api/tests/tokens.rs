//! Tokens from an identity provider: RS256, ES256 and EdDSA with a PEM public key or
//! a JWKS document (served by a local HTTP server, or read from a file), key rotation
//! by `kid`, issuer and audience, configurable claims, and the attacks: wrong keys,
//! unknown keys, expired tokens and algorithm confusion. Through `oneshot`, with the
//! database at a closed port: a token that passes authentication (and may act for the
//! user) gets 503 from the database, one that does not gets 401 or 403.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, OctetKeyPairParameters, OctetKeyPairType,
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tally_api::auth::TokenRules;
use tally_api::jwks::Jwks;
use tally_api::{app, pool, AppConfig, AppState, Keys};
use tower::ServiceExt;

const SECRET: &[u8] = b"a-token-test-secret-of-32-bytes-or-more!";

/// A key pair made by openssl: the private key for signing, the public PEM.
struct KeyPair {
    algorithm: Algorithm,
    signing: EncodingKey,
    public_pem: Vec<u8>,
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-tokens-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?}");
}

fn key_pair(algorithm: Algorithm, name: &str) -> KeyPair {
    let dir = scratch(name);
    let (private, public) = (dir.join("private.pem"), dir.join("public.pem"));
    let p = |path: &Path| path.to_str().unwrap().to_string();
    match algorithm {
        Algorithm::RS256 => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &p(&private),
        ]),
        Algorithm::ES256 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &p(&private),
        ]),
        Algorithm::EdDSA => openssl(&["genpkey", "-algorithm", "ED25519", "-out", &p(&private)]),
        _ => unreachable!(),
    }
    openssl(&["pkey", "-in", &p(&private), "-pubout", "-out", &p(&public)]);
    let private_pem = std::fs::read(&private).unwrap();
    let signing = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&private_pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&private_pem),
        _ => EncodingKey::from_ed_pem(&private_pem),
    }
    .unwrap();
    KeyPair {
        algorithm,
        signing,
        public_pem: std::fs::read(&public).unwrap(),
    }
}

impl KeyPair {
    fn jwk(&self, kid: &str) -> Jwk {
        let mut jwk = if self.algorithm == Algorithm::EdDSA {
            // jsonwebtoken builds no Ed25519 JWK: its `x` is the raw public key, the
            // last 32 bytes of the DER of the PEM.
            use base64::Engine;
            let body: String = String::from_utf8(self.public_pem.clone())
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap();
            Jwk {
                common: Default::default(),
                algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    key_type: OctetKeyPairType::OctetKeyPair,
                    curve: EllipticCurve::Ed25519,
                    x: base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(&der[der.len() - 32..]),
                }),
            }
        } else {
            Jwk::from_encoding_key(&self.signing, self.algorithm).unwrap()
        };
        jwk.common.key_id = Some(kid.into());
        jwk
    }

    fn sign(&self, kid: Option<&str>, claims: Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = kid.map(str::to_string);
        encode(&header, &claims, &self.signing).unwrap()
    }
}

fn in_an_hour() -> u64 {
    jsonwebtoken::get_current_timestamp() + 3600
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": in_an_hour()})
}

fn app_with(keys: Keys) -> Router {
    app(AppState {
        pool: pool(
            "postgres://postgres@127.0.0.1:1/none",
            2,
            Duration::from_secs(5),
        )
        .unwrap(),
        keys,
        config: AppConfig {
            request_timeout: Duration::from_secs(5),
            ..AppConfig::default()
        },
    })
}

/// The status of reading `user`'s usage with `token`.
async fn usage_status(app: &Router, token: &str, user: &str) -> StatusCode {
    let request = Request::get(format!("/v1/users/{user}/usage"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

/// Authenticated and allowed: the request reached the (closed) database.
const PASSED: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

#[tokio::test]
async fn provider_tokens_verify_with_a_pem_public_key_of_each_algorithm() {
    for (algorithm, name) in [
        (Algorithm::RS256, "rs"),
        (Algorithm::ES256, "es"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let provider = key_pair(algorithm, name);
        let stranger = key_pair(algorithm, &format!("{name}-stranger"));
        let app = app_with(
            Keys::new(SECRET)
                .with_public_key(&provider.public_pem)
                .unwrap(),
        );
        let token = provider.sign(None, claims("kamile"));
        assert_eq!(
            usage_status(&app, &token, "kamile").await,
            PASSED,
            "{algorithm:?}"
        );
        assert_eq!(
            usage_status(&app, &token, "jonas").await,
            StatusCode::FORBIDDEN,
            "{algorithm:?}: a user token for another user"
        );
        let forged = stranger.sign(None, claims("kamile"));
        assert_eq!(
            usage_status(&app, &forged, "kamile").await,
            StatusCode::UNAUTHORIZED,
            "{algorithm:?}: signed by another key"
        );
        let expired = provider.sign(None, json!({"sub": "kamile", "exp": 1_000_000}));
        assert_eq!(
            usage_status(&app, &expired, "kamile").await,
            StatusCode::UNAUTHORIZED,
            "{algorithm:?}: expired"
        );
        let no_exp = provider.sign(None, json!({"sub": "kamile"}));
        assert_eq!(
            usage_status(&app, &no_exp, "kamile").await,
            StatusCode::UNAUTHORIZED,
            "{algorithm:?}: no exp"
        );
        // HS256 tokens minted with the secret keep working beside the provider's.
        assert_eq!(
            usage_status(
                &app,
                &Keys::new(SECRET).mint("kamile", tally_api::Role::User, 60),
                "kamile"
            )
            .await,
            PASSED
        );
    }
}

#[tokio::test]
async fn a_public_key_never_serves_as_an_hs256_secret() {
    let provider = key_pair(Algorithm::RS256, "confusion");
    let app = app_with(
        Keys::new(SECRET)
            .with_public_key(&provider.public_pem)
            .unwrap(),
    );
    // The classic confusion attack: HS256 "signed" with the public key's PEM text.
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims("kamile"),
        &EncodingKey::from_secret(&provider.public_pem),
    )
    .unwrap();
    assert_eq!(
        usage_status(&app, &token, "kamile").await,
        StatusCode::UNAUTHORIZED
    );
    // And an RS256 key does not verify an ES256 token, whatever its signature.
    let es = key_pair(Algorithm::ES256, "confusion-es");
    let token = es.sign(None, claims("kamile"));
    assert_eq!(
        usage_status(&app, &token, "kamile").await,
        StatusCode::UNAUTHORIZED
    );
    // No provider key configured: provider tokens are refused.
    let hs_only = app_with(Keys::new(SECRET));
    let token = provider.sign(None, claims("kamile"));
    assert_eq!(
        usage_status(&hs_only, &token, "kamile").await,
        StatusCode::UNAUTHORIZED
    );
}

/// A JWKS document served over HTTP by a local server that counts its fetches.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Vec<Jwk>) -> JwksServer {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), fetches.clone());
        let router = Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let keys = served.lock().unwrap().clone();
                    axum::Json(JwkSet { keys })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        JwksServer { url, keys, fetches }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn jwks_keys_rotate_by_kid_and_unknown_kids_cannot_flood_the_provider() {
    let first = key_pair(Algorithm::RS256, "jwks-first");
    let second = key_pair(Algorithm::ES256, "jwks-second");
    let server = JwksServer::start(vec![first.jwk("k1")]).await;
    let app = app_with(
        Keys::new(SECRET).with_jwks(Jwks::load(&server.url, Duration::ZERO).await.unwrap()),
    );
    assert_eq!(server.fetches(), 1, "fetched at start");
    assert_eq!(
        usage_status(&app, &first.sign(Some("k1"), claims("kamile")), "kamile").await,
        PASSED
    );
    assert_eq!(server.fetches(), 1, "a known kid needs no fetch");

    // The provider rotates: k2 replaces k1. A token with k2 makes the API fetch again.
    let token_k2 = second.sign(Some("k2"), claims("kamile"));
    *server.keys.lock().unwrap() = vec![second.jwk("k2")];
    assert_eq!(usage_status(&app, &token_k2, "kamile").await, PASSED);
    assert_eq!(server.fetches(), 2);
    assert_eq!(
        usage_status(&app, &first.sign(Some("k1"), claims("kamile")), "kamile").await,
        StatusCode::UNAUTHORIZED,
        "a key the provider dropped is dropped"
    );
    // A kid naming a key of another algorithm is refused.
    assert_eq!(
        usage_status(&app, &first.sign(Some("k2"), claims("kamile")), "kamile").await,
        StatusCode::UNAUTHORIZED
    );

    // With the real refresh interval, invented kids cost at most one fetch.
    let throttled = app_with(
        Keys::new(SECRET).with_jwks(
            Jwks::load(&server.url, tally_api::jwks::MIN_REFRESH)
                .await
                .unwrap(),
        ),
    );
    let before = server.fetches();
    for i in 0..50 {
        let token = second.sign(Some(&format!("invented-{i}")), claims("kamile"));
        assert_eq!(
            usage_status(&throttled, &token, "kamile").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert!(
        server.fetches() - before <= 1,
        "{} fetches for invented kids",
        server.fetches() - before
    );
    assert_eq!(usage_status(&throttled, &token_k2, "kamile").await, PASSED);
}

#[tokio::test]
async fn a_jwks_file_works_and_a_bad_one_is_refused_at_start() {
    let provider = key_pair(Algorithm::EdDSA, "jwks-file");
    let path = scratch("jwks-file").join("jwks.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&JwkSet {
            keys: vec![provider.jwk("ed1")],
        })
        .unwrap(),
    )
    .unwrap();
    let location = path.to_str().unwrap();
    for source in [location.to_string(), format!("file://{location}")] {
        let app = app_with(
            Keys::new(SECRET).with_jwks(Jwks::load(&source, Duration::ZERO).await.unwrap()),
        );
        assert_eq!(
            usage_status(
                &app,
                &provider.sign(Some("ed1"), claims("kamile")),
                "kamile"
            )
            .await,
            PASSED
        );
    }
    std::fs::write(&path, b"{\"keys\": []}").unwrap();
    let error = Jwks::load(location, Duration::ZERO)
        .await
        .err()
        .expect("an empty JWKS is refused");
    assert!(error.contains("no RS256, ES256 or EdDSA key"), "{error}");
    let error = Jwks::load("http://127.0.0.1:1/jwks.json", Duration::ZERO)
        .await
        .err()
        .expect("unreachable");
    assert!(error.contains("cannot fetch"), "{error}");
}

#[tokio::test]
async fn issuer_audience_and_custom_claims_are_checked() {
    let provider = key_pair(Algorithm::ES256, "rules");
    let app = app_with(
        Keys::new(SECRET)
            .with_public_key(&provider.public_pem)
            .unwrap()
            .with_rules(TokenRules {
                issuer: Some("https://id.example/".into()),
                audience: Some("tally".into()),
                user_claim: "https://tally.example/user".into(),
                role_claim: "https://tally.example/roles".into(),
            }),
    );
    let token = |iss: &str, aud: &str, roles: Value| {
        provider.sign(
            None,
            json!({"sub": "idp|123", "https://tally.example/user": "kamile", "https://tally.example/roles": roles,
                   "iss": iss, "aud": aud, "exp": in_an_hour()}),
        )
    };
    let good = token("https://id.example/", "tally", json!([]));
    assert_eq!(
        usage_status(&app, &good, "kamile").await,
        PASSED,
        "the user id comes from the custom claim"
    );
    assert_eq!(
        usage_status(&app, &good, "idp|123").await,
        StatusCode::FORBIDDEN
    );
    let service = token("https://id.example/", "tally", json!(["reader", "service"]));
    assert_eq!(
        usage_status(&app, &service, "anyone").await,
        PASSED,
        "a service role in an array"
    );
    for (why, bad) in [
        (
            "wrong issuer",
            token("https://evil.example/", "tally", json!([])),
        ),
        (
            "wrong audience",
            token("https://id.example/", "other-app", json!([])),
        ),
    ] {
        assert_eq!(
            usage_status(&app, &bad, "kamile").await,
            StatusCode::UNAUTHORIZED,
            "{why}"
        );
    }
    let no_user = provider.sign(None, json!({"sub": "idp|123", "iss": "https://id.example/", "aud": "tally", "exp": in_an_hour()}));
    assert_eq!(
        usage_status(&app, &no_user, "idp|123").await,
        StatusCode::UNAUTHORIZED,
        "no user id claim"
    );
    let no_iss = provider.sign(
        None,
        json!({"https://tally.example/user": "kamile", "aud": "tally", "exp": in_an_hour()}),
    );
    assert_eq!(
        usage_status(&app, &no_iss, "kamile").await,
        StatusCode::UNAUTHORIZED,
        "no iss"
    );
}
