//! Who is calling, and what they may do.
//!
//! People and services present a bearer JWT: one configured algorithm, issuer and audience,
//! an expiry checked with a small leeway, the caller in `sub` and what it may do in `scope`
//! (space-separated). Machines may present an API key instead (`X-API-Key`); only its SHA-256
//! is configured. Server-sent event routes also take the token as `access_token` in the query,
//! because a browser's `EventSource` cannot send headers.
//!
//! Scopes:
//! - `customer`: the caller's own orders, sagas, accounts, images and notifications; `sub` is
//!   the customer id.
//! - `customers`: any customer's (a trusted back end acting for its customers).
//! - `operator`: everything, including products, balances and the saga list.
//! - `ui`: the live saga page's data (`/ui/events`, `/ui/queues`, the saga list).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{ApiError, AppState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Customer,
    Customers,
    Operator,
    Ui,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "customer" => Some(Self::Customer),
            "customers" => Some(Self::Customers),
            "operator" => Some(Self::Operator),
            "ui" => Some(Self::Ui),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject or the API key's name: the rate limiter's key, and the customer id
    /// of a `customer` token.
    pub id: String,
    pub scopes: BTreeSet<Scope>,
}

impl Principal {
    /// Whether the caller has `scope` (operators have every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Operator) || self.scopes.contains(&scope)
    }

    /// Refuses (403) a caller without `scope` (operators have every scope).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                format!("this needs the {scope:?} scope").to_lowercase(),
            ))
        }
    }

    /// Refuses (403) a caller who may not act for `customer`.
    pub fn act_for(&self, customer: &str) -> Result<(), ApiError> {
        if self.has(Scope::Customers) || (self.has(Scope::Customer) && self.id == customer) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "not allowed for customer {customer:?}"
            )))
        }
    }

    /// The customer a request is for: the one it names (if the caller may act for it), else
    /// the caller's own when it is limited to one, else none (any customer).
    pub fn customer_for(&self, named: Option<String>) -> Result<Option<String>, ApiError> {
        match (named, self.only_customer()) {
            (Some(named), _) => self.act_for(&named).map(|()| Some(named)),
            (None, Some(own)) => self.act_for(own).map(|()| Some(own.to_owned())),
            (None, None) => Ok(None),
        }
    }

    /// The one customer this caller is limited to, if it is limited to one.
    pub fn only_customer(&self) -> Option<&str> {
        (!self.has(Scope::Customers)).then_some(self.id.as_str())
    }
}

/// An API key as configured: a name, the SHA-256 of the key, and its scopes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    /// Lowercase hex SHA-256 of the key (`warren auth api-key` prints both).
    pub sha256: String,
    pub scopes: Vec<String>,
}

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub algorithm: Algorithm,
    /// The shared secret (HS256/384/512) or the public key in PEM (RS*, PS*, ES*, EdDSA).
    pub key: Vec<u8>,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
}

/// The gateway's checker of credentials. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    jwt: Option<Arc<(DecodingKey, Validation)>>,
    keys: Arc<HashMap<[u8; 32], Principal>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("jwt", &self.jwt.as_ref().map(|j| j.1.algorithms.clone()))
            .field("api_keys", &self.keys.len())
            .finish()
    }
}

impl Auth {
    /// Checks the configuration; a gateway with no way to accept anyone refuses to start.
    pub fn new(jwt: Option<JwtSettings>, api_keys: Vec<ApiKey>) -> Result<Self, String> {
        let jwt = jwt.map(decoder).transpose()?.map(Arc::new);
        let mut keys = HashMap::new();
        for key in api_keys {
            let hash = parse_sha256(&key.sha256)
                .ok_or_else(|| format!("API key {:?}: sha256 is not 64 hex digits", key.name))?;
            let scopes = parse_scopes(key.scopes.iter().map(String::as_str))
                .map_err(|e| format!("API key {:?}: {e}", key.name))?;
            keys.insert(
                hash,
                Principal {
                    id: key.name,
                    scopes,
                },
            );
        }
        if jwt.is_none() && keys.is_empty() {
            return Err(
                "no credentials are configured: set a JWT key (WARREN_JWT_KEY_FILE) or \
                        API keys (WARREN_API_KEYS_FILE)"
                    .into(),
            );
        }
        Ok(Self {
            jwt,
            keys: Arc::new(keys),
        })
    }

    /// The caller of a request, from its `Authorization: Bearer`, `X-API-Key` or (for event
    /// streams) `access_token` query parameter.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Principal, ApiError> {
        if let Some(key) = headers.get("x-api-key") {
            let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            return self
                .keys
                .get(&hash)
                .cloned()
                .ok_or_else(|| ApiError::Unauthorized("unknown API key".into()));
        }
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let token = bearer.or(query_token).ok_or_else(|| {
            ApiError::Unauthorized("a bearer token or an API key is required".into())
        })?;
        let (key, validation) = self
            .jwt
            .as_deref()
            .ok_or_else(|| ApiError::Unauthorized("this gateway takes API keys only".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?;
        let scopes = parse_scopes(data.claims.scope.split_whitespace())
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?;
        Ok(Principal {
            id: data.claims.sub,
            scopes,
        })
    }
}

fn decoder(settings: JwtSettings) -> Result<(DecodingKey, Validation), String> {
    use Algorithm::{
        ES256, ES384, EdDSA, HS256, HS384, HS512, PS256, PS384, PS512, RS256, RS384, RS512,
    };
    let key = match settings.algorithm {
        HS256 | HS384 | HS512 => {
            if settings.key.len() < 32 {
                return Err("the JWT secret must be at least 32 bytes".into());
            }
            DecodingKey::from_secret(&settings.key).map_err(|e| format!("JWT key: {e}"))?
        }
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
            DecodingKey::from_rsa_pem(&settings.key).map_err(|e| format!("JWT key: {e}"))?
        }
        ES256 | ES384 => {
            DecodingKey::from_ec_pem(&settings.key).map_err(|e| format!("JWT key: {e}"))?
        }
        EdDSA => DecodingKey::from_ed_pem(&settings.key).map_err(|e| format!("JWT key: {e}"))?,
        other => return Err(format!("the JWT algorithm {other:?} is not supported")),
    };
    // Only the configured algorithm: a token may not choose how it is checked.
    let mut validation = Validation::new(settings.algorithm);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = settings.leeway_secs;
    Ok((key, validation))
}

fn parse_scopes<'a>(names: impl Iterator<Item = &'a str>) -> Result<BTreeSet<Scope>, String> {
    names
        .map(|name| Scope::parse(name).ok_or_else(|| format!("unknown scope {name:?}")))
        .collect()
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Event streams take the token from the query too; other routes never do, so tokens stay out
/// of the URLs that proxies log.
fn query_token(parts: &Parts) -> Option<String> {
    let streaming = parts.uri.path().ends_with("/events") || parts.uri.path().ends_with("/stream");
    if parts.method != Method::GET || !streaming {
        return None;
    }
    parts.uri.query()?.split('&').find_map(|pair| {
        pair.strip_prefix("access_token=")
            .map(|t| t.replace("%2E", ".").replace("%2e", "."))
    })
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let principal = state
            .auth
            .authenticate(&parts.headers, query_token(parts).as_deref())?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(id: &str, scopes: &[Scope]) -> Principal {
        Principal {
            id: id.into(),
            scopes: scopes.iter().copied().collect(),
        }
    }

    #[test]
    fn a_customer_acts_only_for_itself() {
        let c1 = principal("c-1", &[Scope::Customer]);
        assert!(c1.act_for("c-1").is_ok());
        assert!(matches!(c1.act_for("c-2"), Err(ApiError::Forbidden(_))));
        assert_eq!(c1.only_customer(), Some("c-1"));
        assert_eq!(c1.customer_for(None).unwrap().as_deref(), Some("c-1"));
        assert!(c1.customer_for(Some("c-2".into())).is_err());
        assert!(c1.require(Scope::Operator).is_err());
        assert!(c1.require(Scope::Ui).is_err());
    }

    #[test]
    fn operators_and_back_ends_act_for_anyone() {
        let operator = principal("ops", &[Scope::Operator]);
        let shop = principal("shop", &[Scope::Customers]);
        for p in [&operator, &shop] {
            assert!(p.act_for("c-9").is_ok());
            assert_eq!(p.only_customer(), None);
        }
        assert!(operator.require(Scope::Ui).is_ok());
        assert!(shop.require(Scope::Operator).is_err());
    }

    #[test]
    fn a_gateway_without_credentials_refuses_to_start() {
        assert!(Auth::new(None, vec![]).is_err());
        let short = JwtSettings {
            algorithm: Algorithm::HS256,
            key: b"short".to_vec(),
            issuer: "warren".into(),
            audience: "warren".into(),
            leeway_secs: 30,
        };
        assert!(Auth::new(Some(short), vec![]).is_err());
    }

    #[test]
    fn api_keys_are_found_by_their_hash() {
        let hash: [u8; 32] = Sha256::digest(b"wk_secret").into();
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let auth = Auth::new(
            None,
            vec![ApiKey {
                name: "shop".into(),
                sha256: hex,
                scopes: vec!["customers".into()],
            }],
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "wk_secret".parse().unwrap());
        let caller = auth.authenticate(&headers, None).unwrap();
        assert_eq!(caller.id, "shop");
        headers.insert("x-api-key", "wk_other".parse().unwrap());
        assert!(matches!(
            auth.authenticate(&headers, None),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            auth.authenticate(&HeaderMap::new(), None),
            Err(ApiError::Unauthorized(_))
        ));
    }
}
