//! Bearer tokens: JWTs naming a user (claim `sub` by default), a role (claim `role`:
//! `user`, the default, or `service`) and an expiry (`exp`, required).
//!
//! Two kinds of signer are trusted. HS256 with `TALLY_JWT_SECRET`: the tokens
//! `tally-api token` mints. RS256, ES256 and EdDSA from the app's identity provider,
//! verified with a PEM public key (`TALLY_JWT_PUBLIC_KEY`) or a JWKS document
//! (`TALLY_JWKS_URL`). Each algorithm is verified only with keys of its own kind, so
//! a public key can never serve as an HS256 secret. `iss` and `aud` are checked
//! when `TALLY_JWT_ISSUER` and `TALLY_JWT_AUDIENCE` are set.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::jwks::Jwks;
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Service,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub role: Role,
    pub exp: u64,
}

/// What a token must carry, beyond a valid signature.
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim holding the user id (`sub`, or a provider's custom claim).
    pub user_claim: String,
    /// The claim holding the role: `service` (or an array containing it) for a
    /// service token; anything else, or nothing, is a user token.
    pub role_claim: String,
}

impl Default for TokenRules {
    fn default() -> Self {
        TokenRules {
            issuer: None,
            audience: None,
            user_claim: "sub".into(),
            role_claim: "role".into(),
        }
    }
}

/// A public key of the identity provider and the one algorithm it verifies.
#[derive(Clone)]
struct PublicKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

/// Every key tokens are verified with, and the rules they must follow.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    secret: DecodingKey,
    public: Option<PublicKey>,
    jwks: Option<Arc<Jwks>>,
    rules: Arc<TokenRules>,
}

impl Keys {
    /// HS256 with `secret` only, and the default rules.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            secret: DecodingKey::from_secret(secret),
            public: None,
            jwks: None,
            rules: Arc::new(TokenRules::default()),
        }
    }

    /// Also trusts the identity provider's public key, given as PEM (RSA, EC P-256
    /// or Ed25519, for RS256, ES256 or EdDSA).
    pub fn with_public_key(mut self, pem: &[u8]) -> Result<Self, String> {
        let public = DecodingKey::from_rsa_pem(pem)
            .map(|key| (key, Algorithm::RS256))
            .or_else(|_| DecodingKey::from_ec_pem(pem).map(|key| (key, Algorithm::ES256)))
            .or_else(|_| DecodingKey::from_ed_pem(pem).map(|key| (key, Algorithm::EdDSA)))
            .map_err(|_| {
                "TALLY_JWT_PUBLIC_KEY is not a PEM public key of RSA, EC P-256 or Ed25519"
                    .to_string()
            })?;
        self.public = Some(PublicKey {
            key: public.0,
            algorithm: public.1,
        });
        Ok(self)
    }

    /// Also trusts the keys of a JWKS document.
    pub fn with_jwks(mut self, jwks: Jwks) -> Self {
        self.jwks = Some(Arc::new(jwks));
        self
    }

    pub fn with_rules(mut self, rules: TokenRules) -> Self {
        self.rules = Arc::new(rules);
        self
    }

    /// An HS256 token for `sub` (claims `sub` and `role`), valid `ttl_seconds`.
    pub fn mint(&self, sub: &str, role: Role, ttl_seconds: u64) -> String {
        let exp = jsonwebtoken::get_current_timestamp() + ttl_seconds;
        let claims = Claims {
            sub: sub.to_string(),
            role,
            exp,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// The key for a token's header: the secret for HS256, the provider's key for
    /// the others (by key id from the JWKS, else the PEM key), never across kinds.
    async fn key_for(&self, header: &Header) -> Result<DecodingKey, ApiError> {
        let refused = |why: &str| ApiError::Unauthorized(format!("invalid bearer token: {why}"));
        match header.alg {
            Algorithm::HS256 => Ok(self.secret.clone()),
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                if let (Some(kid), Some(jwks)) = (&header.kid, &self.jwks) {
                    return match jwks.key(kid).await {
                        Some((key, algorithm)) if algorithm == header.alg => Ok(key),
                        Some(_) => Err(refused("the key named by kid is for another algorithm")),
                        None => Err(refused("unknown signing key (kid)")),
                    };
                }
                match &self.public {
                    Some(public) if public.algorithm == header.alg => Ok(public.key.clone()),
                    _ => Err(refused("no trusted key for this algorithm")),
                }
            }
            _ => Err(refused("unsupported algorithm")),
        }
    }

    async fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let header = decode_header(token)
            .map_err(|e| ApiError::Unauthorized(format!("invalid bearer token: {e}")))?;
        let key = self.key_for(&header).await?;
        let rules = &self.rules;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 5;
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        let claims = decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid bearer token: {e}")))?
            .claims;
        let sub = claims
            .get(&rules.user_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized(format!(
                    "the token has no user id in claim {:?}",
                    rules.user_claim
                ))
            })?;
        let is_service = |v: &Value| v.as_str() == Some("service");
        let role = match claims.get(&rules.role_claim) {
            Some(Value::Array(roles)) if roles.iter().any(is_service) => Role::Service,
            Some(v) if is_service(v) => Role::Service,
            _ => Role::User,
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        Ok(Claims {
            sub: sub.to_string(),
            role,
            exp,
        })
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl Caller {
    /// The user a user token acts for; None for a service token, which names no user.
    pub fn own_user(&self) -> Option<&str> {
        (self.0.role != Role::Service).then_some(self.0.sub.as_str())
    }

    /// A user token acts only for its own `sub`; a service token for anyone.
    pub fn may_act_for(&self, user_id: &str) -> Result<(), ApiError> {
        if self.0.role == Role::Service || self.0.sub == user_id {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this token may not act for another user".into(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization: Bearer <token>".into())
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization must be `Bearer <token>`".into())
            })?;
        state.keys.verify(token.trim()).await.map(Caller)
    }
}
