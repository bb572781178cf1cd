//! Who is calling: principals from static tokens, Basic credentials or HS256 JWTs, all configured.
//!
//! A principal has a name (it owns the norns it creates), roles and the key patterns it may read.
//! Secrets are compared in constant time; with no credentials configured, auth is off and every
//! caller is the all-powerful `anonymous` (allowed only on a loopback listener, see `config`).

use std::collections::HashSet;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::ConfigError;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Post events.
    Publish,
    /// Manage its own norns and open live streams for keys it may read.
    Subscribe,
    /// Everything, and every norn.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publish => "publish",
            Role::Subscribe => "subscribe",
            Role::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Role> {
        match name {
            "publish" => Some(Role::Publish),
            "subscribe" => Some(Role::Subscribe),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Static API tokens (`Authorization: Bearer` or `X-Auth-Token`).
    pub tokens: Vec<TokenCredential>,
    /// `Authorization: Basic` users.
    pub basic: Vec<BasicCredential>,
    /// JWTs signed with HS256.
    pub jwt: Option<JwtConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCredential {
    pub token: String,
    pub principal: String,
    pub roles: Vec<Role>,
    #[serde(default = "all_keys")]
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    pub user: String,
    pub password: String,
    pub principal: String,
    pub roles: Vec<Role>,
    #[serde(default = "all_keys")]
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    pub hs256_secret: String,
    /// Claim holding the principal's name.
    pub principal_claim: String,
    /// Claim holding a list of role names.
    pub roles_claim: String,
    /// Claim holding a list of key patterns (absent: all keys).
    pub keys_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: String::new(),
            principal_claim: "sub".into(),
            roles_claim: "roles".into(),
            keys_claim: "keys".into(),
        }
    }
}

fn all_keys() -> Vec<String> {
    vec!["*".into()]
}

impl AuthConfig {
    /// Whether any credential is configured (auth is off otherwise).
    pub fn is_enabled(&self) -> bool {
        !self.tokens.is_empty() || !self.basic.is_empty() || self.jwt.is_some()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            key,
            message: message.into(),
        };
        for (i, token) in self.tokens.iter().enumerate() {
            if token.token.len() < 8 {
                return Err(invalid(
                    format!("auth.tokens[{i}].token"),
                    "must be at least 8 characters",
                ));
            }
        }
        for (i, basic) in self.basic.iter().enumerate() {
            if basic.password.is_empty() {
                return Err(invalid(
                    format!("auth.basic[{i}].password"),
                    "must not be empty",
                ));
            }
        }
        if let Some(jwt) = &self.jwt
            && jwt.hs256_secret.len() < 16
        {
            return Err(invalid(
                "auth.jwt.hs256_secret".into(),
                "must be at least 16 characters",
            ));
        }
        Ok(())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: HashSet<Role>,
    pub keys: Vec<String>,
}

impl Principal {
    /// The caller when auth is off.
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".into(),
            roles: [Role::Admin].into(),
            keys: all_keys(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// Whether this principal may see and change what `owner` owns: its own, or anything if admin.
    pub fn may_manage(&self, owner: &str) -> bool {
        self.is_admin() || self.name == owner
    }

    /// Admin implies every role.
    pub fn has_role(&self, role: Role) -> bool {
        self.is_admin() || self.roles.contains(&role)
    }

    /// Whether this principal may read events of `key`.
    pub fn may_read(&self, key: &str) -> bool {
        self.is_admin() || self.keys.iter().any(|pattern| glob_match(pattern, key))
    }
}

/// Why credentials were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("credentials are required")]
    Missing,
    #[error("the credentials are not valid")]
    Invalid,
}

/// The credentials a request carried.
pub enum Credentials<'a> {
    Bearer(&'a str),
    Basic { user: String, password: String },
}

/// Checks credentials against the configured ones.
pub struct Authenticator {
    config: AuthConfig,
    jwt_key: Option<DecodingKey>,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Authenticator {
        let jwt_key = config
            .jwt
            .as_ref()
            .map(|jwt| DecodingKey::from_secret(jwt.hs256_secret.as_bytes()));
        Authenticator { config, jwt_key }
    }

    pub fn is_enabled(&self) -> bool {
        self.config.is_enabled()
    }

    /// Reads `Authorization` (Bearer/Basic) or `X-Auth-Token`.
    pub fn credentials<'a>(
        authorization: Option<&'a str>,
        x_auth_token: Option<&'a str>,
    ) -> Option<Credentials<'a>> {
        if let Some(header) = authorization {
            let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(Credentials::Bearer(rest));
            }
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())?;
                let (user, password) = decoded.split_once(':')?;
                return Some(Credentials::Basic {
                    user: user.into(),
                    password: password.into(),
                });
            }
            return None;
        }
        x_auth_token.map(|token| Credentials::Bearer(token.trim()))
    }

    /// The principal for these credentials. With auth off, everyone is `anonymous`.
    pub fn authenticate(
        &self,
        credentials: Option<Credentials<'_>>,
    ) -> Result<Principal, AuthError> {
        if !self.is_enabled() {
            return Ok(Principal::anonymous());
        }
        match credentials.ok_or(AuthError::Missing)? {
            Credentials::Bearer(token) => self
                .static_token(token)
                .or_else(|| self.jwt(token))
                .ok_or(AuthError::Invalid),
            Credentials::Basic { user, password } => {
                // Check every entry so timing does not tell which user names exist.
                let mut found = None;
                for basic in &self.config.basic {
                    let user_ok = secret_eq(&basic.user, &user);
                    let password_ok = secret_eq(&basic.password, &password);
                    if user_ok & password_ok {
                        found = Some(principal(&basic.principal, &basic.roles, &basic.keys));
                    }
                }
                found.ok_or(AuthError::Invalid)
            }
        }
    }

    fn static_token(&self, token: &str) -> Option<Principal> {
        let mut found = None;
        for entry in &self.config.tokens {
            if secret_eq(&entry.token, token) {
                found = Some(principal(&entry.principal, &entry.roles, &entry.keys));
            }
        }
        found
    }

    fn jwt(&self, token: &str) -> Option<Principal> {
        let (config, key) = (self.config.jwt.as_ref()?, self.jwt_key.as_ref()?);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims = ["exp".to_string()].into();
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .ok()?
            .claims;
        let name = claims.get(&config.principal_claim)?.as_str()?.to_owned();
        let strings = |claim: &str| -> Option<Vec<String>> {
            claims.get(claim).map(|value| {
                value
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|item| item.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            })
        };
        let roles = strings(&config.roles_claim)
            .unwrap_or_default()
            .iter()
            .filter_map(|role| Role::parse(role))
            .collect();
        let keys = strings(&config.keys_claim).unwrap_or_else(all_keys);
        Some(Principal { name, roles, keys })
    }
}

fn principal(name: &str, roles: &[Role], keys: &[String]) -> Principal {
    Principal {
        name: name.into(),
        roles: roles.iter().copied().collect(),
        keys: keys.to_vec(),
    }
}

/// Constant-time comparison of secrets (the length still shows, as it must).
pub fn secret_eq(expected: &str, given: &str) -> bool {
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// `*` matches any run of characters (`/` included), `?` one character; all else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "mac:112233445566"));
        assert!(glob_match("mac:*", "mac:112233445566"));
        assert!(!glob_match("mac:*", "uuid:1"));
        assert!(glob_match("mac:1122*66", "mac:112233445566"));
        assert!(glob_match("mac:11223344556?", "mac:112233445566"));
        assert!(!glob_match("mac:11", "mac:112233445566"));
        assert!(glob_match("", ""));
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(AuthConfig {
            tokens: vec![TokenCredential {
                token: "alice-token-1".into(),
                principal: "alice".into(),
                roles: vec![Role::Subscribe],
                keys: vec!["mac:*".into()],
            }],
            basic: vec![BasicCredential {
                user: "caduceus".into(),
                password: "pw".into(),
                principal: "caduceus".into(),
                roles: vec![Role::Publish],
                keys: all_keys(),
            }],
            jwt: Some(JwtConfig {
                hs256_secret: "0123456789abcdef0123".into(),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn tokens_basic_and_jwt() {
        let auth = authenticator();
        let alice = auth
            .authenticate(Authenticator::credentials(
                Some("Bearer alice-token-1"),
                None,
            ))
            .unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice.may_read("mac:1") && !alice.may_read("uuid:1"));
        assert!(!alice.has_role(Role::Publish));
        let by_header = auth
            .authenticate(Authenticator::credentials(None, Some("alice-token-1")))
            .unwrap();
        assert_eq!(by_header.name, "alice");
        assert_eq!(
            auth.authenticate(Authenticator::credentials(Some("Bearer nope"), None)),
            Err(AuthError::Invalid)
        );
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("caduceus:pw")
        );
        let caduceus = auth
            .authenticate(Authenticator::credentials(Some(&basic), None))
            .unwrap();
        assert!(caduceus.has_role(Role::Publish));

        let claims = serde_json::json!({"sub": "bob", "roles": ["subscribe"], "keys": ["uuid:*"], "exp": 4102444800u64});
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123"),
        )
        .unwrap();
        let bob = auth.authenticate(Some(Credentials::Bearer(&jwt))).unwrap();
        assert_eq!(bob.name, "bob");
        assert!(bob.may_read("uuid:1") && !bob.may_read("mac:1"));
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"another-secret-entirely"),
        )
        .unwrap();
        assert!(
            auth.authenticate(Some(Credentials::Bearer(&forged)))
                .is_err()
        );
    }
}
