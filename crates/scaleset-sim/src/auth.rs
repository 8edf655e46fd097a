//! Token minting and verification: the GitHub App JWT check, the admin JWT and opaque tokens.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// PKCS#1 PEM of the fixed GitHub App test key shipped with the crate. Test use only.
pub const APP_PRIVATE_KEY_PEM: &str = include_str!("../keys/app-private-key.pem");
/// SPKI PEM of the public half of [`APP_PRIVATE_KEY_PEM`]; the simulator verifies App JWTs
/// with it.
pub const APP_PUBLIC_KEY_PEM: &str = include_str!("../keys/app-public-key.pem");
/// Client id the simulator expects as the App JWT `iss`.
pub const APP_CLIENT_ID: &str = "Iv1.5c4ff01dsim0001";
/// Installation id of the simulated App installation.
pub const APP_INSTALLATION_ID: u64 = 4242;

/// Credentials of the simulated GitHub App.
#[derive(Clone, PartialEq, Eq)]
pub struct AppCredentials {
    /// The App client id (the JWT issuer).
    pub client_id: String,
    /// The installation id to request tokens for.
    pub installation_id: u64,
    /// The PKCS#1 PEM private key.
    pub private_key_pem: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("client_id", &self.client_id)
            .field("installation_id", &self.installation_id)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

impl AppCredentials {
    /// The fixed test credentials.
    pub fn fixed() -> Self {
        Self {
            client_id: APP_CLIENT_ID.to_owned(),
            installation_id: APP_INSTALLATION_ID,
            private_key_pem: APP_PRIVATE_KEY_PEM.to_owned(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct AppClaims {
    iss: String,
    iat: i64,
    exp: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct AdminClaims {
    iss: String,
    sub: String,
    iat: i64,
    exp: i64,
    /// Generation: bumping the simulator's generation invalidates every older token.
    gen_: u64,
}

pub(crate) struct Keys {
    app_public: DecodingKey,
    admin_enc: EncodingKey,
    admin_dec: DecodingKey,
}

pub(crate) fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A random URL-safe token with a prefix.
pub(crate) fn random_token(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..36)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

impl Keys {
    pub(crate) fn new() -> Result<Self, SimError> {
        let app_public = DecodingKey::from_rsa_pem(APP_PUBLIC_KEY_PEM.as_bytes())
            .map_err(|e| SimError::Key(format!("app public key: {e}")))?;
        let mut secret = [0u8; 32];
        rand::rng().fill(&mut secret);
        Ok(Self {
            app_public,
            admin_enc: EncodingKey::from_secret(&secret),
            admin_dec: DecodingKey::from_secret(&secret),
        })
    }

    /// Verify a GitHub App JWT: RS256 with the shipped key, `iss` = client id, sane `iat`/`exp`.
    pub(crate) fn verify_app_jwt(&self, token: &str, client_id: &str) -> Result<(), String> {
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = 30;
        v.set_issuer(&[client_id]);
        v.set_required_spec_claims(&["exp", "iat", "iss"]);
        let data = jsonwebtoken::decode::<AppClaims>(token, &self.app_public, &v)
            .map_err(|e| format!("invalid App JWT: {e}"))?;
        let c = data.claims;
        let now = now_secs();
        if c.iat > now.saturating_add(60) {
            return Err("App JWT iat is in the future".into());
        }
        if c.exp <= c.iat {
            return Err("App JWT exp is not after iat".into());
        }
        if c.exp.saturating_sub(c.iat) > 11 * 60 || c.exp > now.saturating_add(11 * 60) {
            return Err("App JWT lifetime exceeds 10 minutes".into());
        }
        Ok(())
    }

    pub(crate) fn mint_admin(&self, ttl_secs: i64, generation: u64) -> Result<String, String> {
        let now = now_secs();
        let claims = AdminClaims {
            iss: "scaleset-sim".into(),
            sub: "admin".into(),
            iat: now,
            exp: now.saturating_add(ttl_secs.max(1)),
            gen_: generation,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.admin_enc)
            .map_err(|e| e.to_string())
    }

    /// Verify an admin JWT; returns its generation.
    pub(crate) fn verify_admin(&self, token: &str) -> Result<u64, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<AdminClaims>(token, &self.admin_dec, &v)
            .map_err(|e| e.to_string())?;
        Ok(data.claims.gen_)
    }
}
