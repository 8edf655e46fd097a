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
/// Client id the simulator accepts as the App JWT `iss`.
pub const APP_CLIENT_ID: &str = "Iv1.5c4ff01dsim0001";
/// Default numeric App id the simulator also accepts as the App JWT `iss` (GitHub accepts
/// either the client id or the app id); see [`crate::SimConfig::app_id`].
pub const APP_ID: u64 = 424_242;
/// Installation id of the simulated App installation.
pub const APP_INSTALLATION_ID: u64 = 4242;

/// Credentials of the simulated GitHub App.
#[derive(Clone, PartialEq, Eq)]
pub struct AppCredentials {
    /// The App client id (a JWT issuer the simulator accepts).
    pub client_id: String,
    /// The numeric App id (the other JWT issuer the simulator accepts, as a JSON number or
    /// a string).
    pub app_id: u64,
    /// The installation id to request tokens for.
    pub installation_id: u64,
    /// The PKCS#1 PEM private key.
    pub private_key_pem: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("client_id", &self.client_id)
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

impl AppCredentials {
    /// The fixed test credentials (app id [`APP_ID`]).
    pub fn fixed() -> Self {
        Self::with_app_id(APP_ID)
    }

    /// The fixed test credentials with another numeric app id.
    pub fn with_app_id(app_id: u64) -> Self {
        Self {
            client_id: APP_CLIENT_ID.to_owned(),
            app_id,
            installation_id: APP_INSTALLATION_ID,
            private_key_pem: APP_PRIVATE_KEY_PEM.to_owned(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct AppClaims {
    /// A string (client id, or app id as text) or a number (app id).
    iss: serde_json::Value,
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

    /// Verify a GitHub App JWT: RS256 with the shipped key, `iss` = client id or numeric app
    /// id (a JSON number or a decimal string), sane `iat`/`exp`.
    pub(crate) fn verify_app_jwt(
        &self,
        token: &str,
        client_id: &str,
        app_id: u64,
    ) -> Result<(), String> {
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = 30;
        v.set_required_spec_claims(&["exp", "iat"]);
        let data = jsonwebtoken::decode::<AppClaims>(token, &self.app_public, &v)
            .map_err(|e| format!("invalid App JWT: {e}"))?;
        let c = data.claims;
        let iss_ok = match &c.iss {
            serde_json::Value::String(s) => s == client_id || s.parse::<u64>() == Ok(app_id),
            serde_json::Value::Number(n) => n.as_u64() == Some(app_id),
            _ => false,
        };
        if !iss_ok {
            return Err(
                "invalid App JWT: iss is neither the App's client id nor its app id".into(),
            );
        }
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
