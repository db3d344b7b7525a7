//! `warren auth ...`: gateway credentials for people and machines.
//!
//! `token` signs a JWT with the gateway's configured key (the HS* secret of
//! `WARREN_JWT_KEY_FILE`, or a private key for the asymmetric algorithms); `api-key` makes a
//! random key and prints the entry for `WARREN_API_KEYS_FILE`, which keeps only its hash.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::settings::JwtSettings;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Sign a token for the gateway; prints it.
    Token {
        /// Who it is for: a customer id for the `customer` scope, a name otherwise.
        #[arg(long)]
        subject: String,
        /// What it may do: customer, customers, operator, ui (space- or comma-separated).
        #[arg(long, default_value = "customer")]
        scope: String,
        /// How long it is valid (`30s`, `15m`, `12h`, `720h`).
        #[arg(long, default_value = "1h", value_parser = saga::duration::parse)]
        ttl: Duration,
        /// The private key (PEM) for RS*, PS*, ES* and EdDSA; HS* signs with the secret of
        /// `WARREN_JWT_KEY_FILE`.
        #[arg(long)]
        private_key: Option<PathBuf>,
        #[command(flatten)]
        jwt: JwtSettings,
    },
    /// Make a random API key; prints it once, and the line for the keys file.
    ApiKey {
        /// The key's name: what logs and rate limits call its holder.
        #[arg(long)]
        name: String,
        /// What it may do: customers, operator, ui (space- or comma-separated).
        #[arg(long)]
        scope: String,
    },
}

pub fn execute(command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::Token {
            subject,
            scope,
            ttl,
            private_key,
            jwt,
        } => {
            println!("{}", token(&jwt, &subject, &scope, ttl, private_key)?);
        }
        AuthCommand::ApiKey { name, scope } => {
            let scopes = scopes(&scope)?;
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let key = format!("wk_{}", hex(&secret));
            let hash = hex(&Sha256::digest(key.as_bytes()));
            println!("key: {key}");
            println!();
            println!("# for WARREN_API_KEYS_FILE");
            println!("[[key]]");
            println!("name = {}", json!(name));
            println!("sha256 = \"{hash}\"");
            println!("scopes = {}", json!(scopes));
        }
    }
    Ok(())
}

/// A signed token for `subject` with `scope`, valid for `ttl`.
pub fn token(
    settings: &JwtSettings,
    subject: &str,
    scope: &str,
    ttl: Duration,
    private_key: Option<PathBuf>,
) -> anyhow::Result<String> {
    let algorithm = settings.algorithm()?;
    let key = match (algorithm, private_key) {
        (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, _) => {
            let path = settings
                .key_file
                .as_ref()
                .context("HS* tokens are signed with WARREN_JWT_KEY_FILE, which is not set")?;
            let secret = std::fs::read(path)
                .with_context(|| format!("reading the JWT secret {}", path.display()))?;
            EncodingKey::from_secret(&secret)?
        }
        (_, None) => anyhow::bail!("{algorithm:?} tokens need --private-key"),
        (_, Some(path)) => {
            let pem = std::fs::read(&path)
                .with_context(|| format!("reading the private key {}", path.display()))?;
            match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem)?,
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem)?,
                _ => EncodingKey::from_rsa_pem(&pem)?,
            }
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = json!({
        "sub": subject,
        "scope": scopes(scope)?.join(" "),
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    Ok(jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &key,
    )?)
}

fn scopes(text: &str) -> anyhow::Result<Vec<&str>> {
    let scopes: Vec<&str> = text.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    for scope in &scopes {
        anyhow::ensure!(
            gateway::Scope::parse(scope).is_some(),
            "unknown scope {scope:?}: customer, customers, operator or ui"
        );
    }
    anyhow::ensure!(!scopes.is_empty(), "name at least one scope");
    Ok(scopes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
