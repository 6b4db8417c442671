//! Signing keys of the app's identity provider, from a JWKS document (an `https://`
//! or `http://` URL, a `file://` URL or a path). Fetched at start; fetched again when
//! a token names a key id the cache does not hold (a key rotation), at most once per
//! `min_refresh`, so that tokens with invented key ids cannot make the API hammer the
//! provider. The cache holds at most `MAX_KEYS` keys, replaced whole on each fetch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Keys kept from one document; further keys are ignored.
pub const MAX_KEYS: usize = 32;

/// Least time between two fetches caused by unknown key ids.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);

enum Source {
    Url(String),
    File(PathBuf),
}

pub struct Jwks {
    source: Source,
    http: reqwest::Client,
    min_refresh: Duration,
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    last_fetch: Mutex<Instant>,
}

impl Jwks {
    /// Loads the document at `location` now; an error says what is wrong with it.
    pub async fn load(location: &str, min_refresh: Duration) -> Result<Jwks, String> {
        let source = if location.starts_with("https://") || location.starts_with("http://") {
            Source::Url(location.to_string())
        } else {
            Source::File(PathBuf::from(
                location.strip_prefix("file://").unwrap_or(location),
            ))
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let jwks = Jwks {
            source,
            http,
            min_refresh,
            keys: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(Instant::now()),
        };
        let keys = jwks.fetch().await?;
        if keys.is_empty() {
            return Err(format!(
                "TALLY_JWKS_URL {location} holds no RS256, ES256 or EdDSA key with a key id"
            ));
        }
        *jwks.keys.write().expect("jwks lock") = keys;
        Ok(jwks)
    }

    /// The key with id `kid` and its algorithm, fetching the document again when the
    /// id is unknown and the last fetch is old enough.
    pub async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        if let Some(found) = self.cached(kid) {
            return Some(found);
        }
        {
            let mut last = self.last_fetch.lock().expect("jwks lock");
            if last.elapsed() < self.min_refresh {
                return None;
            }
            *last = Instant::now();
        }
        match self.fetch().await {
            Ok(keys) => *self.keys.write().expect("jwks lock") = keys,
            Err(error) => tracing::warn!(%error, "cannot refresh the JWKS; keeping the keys held"),
        }
        self.cached(kid)
    }

    fn cached(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.keys.read().expect("jwks lock").get(kid).cloned()
    }

    async fn fetch(&self) -> Result<HashMap<String, (DecodingKey, Algorithm)>, String> {
        let set: JwkSet = match &self.source {
            Source::Url(url) => self
                .http
                .get(url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("cannot fetch the JWKS at {url}: {e}"))?
                .json()
                .await
                .map_err(|e| format!("the JWKS at {url} is not a JWK set: {e}"))?,
            Source::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the JWKS file {}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| {
                    format!("the JWKS file {} is not a JWK set: {e}", path.display())
                })?
            }
        };
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let algorithm = algorithm_of(jwk)?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, (key, algorithm)))
            })
            .take(MAX_KEYS)
            .collect())
    }
}

/// The algorithm a key signs with: its `alg` when given, else what its type implies.
/// Only RS256, ES256 and EdDSA are accepted.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(implied),
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Some(implied),
        Some(_) => None,
    }
}
