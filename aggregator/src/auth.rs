//! Who may call the Arrow Flight service: bearer tokens, each with a
//! [`Role`], from a JSON file.
//!
//! ```json
//! {"tokens": [{"name": "finance", "token": "…(32 to 256 bytes)", "role": "admin"},
//!             {"name": "aff-7", "token": "…", "role": "affiliate:7"}],
//!  "jwt": {"issuer": "https://idp.example", "audience": "edgetally", "role_claim": "role",
//!          "keys": [{"kid": "k1", "alg": "HS256", "secret": "…(at least 32 bytes)"},
//!                   {"kid": "k2", "alg": "RS256", "public_key_pem_file": "rsa.pub.pem"},
//!                   {"kid": "k3", "alg": "ES256", "public_key_pem_file": "ec.pub.pem"}]}}
//! ```
//!
//! A caller sends `authorization: Bearer <token>`. The token is one of the
//! static `tokens`, kept only as hashes ([`TokenHash`]) and compared in
//! constant time against every one of them, or a JWT signed by one of the
//! `jwt` keys. A JWT names its key by `kid` (a token without one is
//! accepted only when one key is configured), must use that key's `alg`
//! (so a public key can never be used as an HMAC secret), must carry
//! `exp`, and `iss` and `aud` when `issuer` and `audience` are set; its
//! role is the string claim `role_claim` (default `role`). Relative PEM
//! paths are relative to the tokens file.
//!
//! What each role may call is [`Role::admit`]; which rows an affiliate
//! sees is decided where tickets are answered, in `flight_service.rs`.
//! Refusals name the problem, never the token.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::token_hash::TokenHash;

/// Shortest static token accepted in the file. Flight tokens are read
/// tokens handed to people and tools, so they get twice the edge tokens'
/// minimum: 32 random characters are beyond guessing over a network.
pub const FLIGHT_TOKEN_LEN_MIN: usize = 32;

/// Longest static token accepted in the file; longer ones are a paste
/// mistake, not more security.
const FLIGHT_TOKEN_LEN_MAX: usize = 256;

/// Longest token `name`: it only labels a token in logs.
const TOKEN_NAME_LEN_MAX: usize = 64;

/// Shortest HS256 secret: RFC 7518 §3.2 asks for a key at least as long as
/// the hash output, 256 bits.
const JWT_SECRET_LEN_MIN: usize = 32;

/// Longest `authorization` value examined. A JWT with an RS256 signature
/// and a few claims is under 1 KiB; 8 KiB leaves room for identity
/// providers that add groups, and bounds the base64 and JSON decoding an
/// unauthenticated caller can make the server do per call.
const AUTHORIZATION_BYTES_MAX: usize = 8 * 1024;

/// Clock skew allowed on `exp` and `nbf`, in seconds: the identity
/// provider's clock and ours may disagree by this much.
const JWT_LEEWAY_SECS: u64 = 60;

/// The claim that holds the role when `role_claim` is not set.
const ROLE_CLAIM_DEFAULT: &str = "role";

/// What a caller is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Everything.
    Admin,
    /// The rows of one affiliate in `rollups` and `conversions`, nothing else.
    Affiliate(u32),
    /// Ships batches over QUIC; no Flight call at all.
    Edge,
}

/// A Flight method, as far as permissions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Handshake,
    ListFlights,
    GetFlightInfo,
    PollFlightInfo,
    GetSchema,
    DoGet,
    DoPut,
    DoAction,
    ListActions,
    DoExchange,
    /// Any call on the Flight SQL port: every one of them reads.
    FlightSql,
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FlightAuthError {
    #[error("read {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse {}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("token name {name:?} must be 1 to {TOKEN_NAME_LEN_MAX} bytes")]
    NameLength { name: String },
    #[error("token {name:?}: token must be {FLIGHT_TOKEN_LEN_MIN} to {FLIGHT_TOKEN_LEN_MAX} bytes, is {len}")]
    TokenLength { name: String, len: usize },
    #[error("token name {0:?} is listed twice")]
    DuplicateName(String),
    #[error("tokens {name:?} and {other:?} are the same token")]
    DuplicateToken { name: String, other: String },
    #[error("token {name:?}: unknown role {role:?}: expected admin, edge or affiliate:<id> with id 1 to {}", u32::MAX)]
    Role { name: String, role: String },
    #[error("jwt: keys is empty: give at least one key or leave jwt out")]
    NoKeys,
    #[error("jwt: role_claim is empty")]
    RoleClaim,
    #[error("jwt key {0:?} is listed twice")]
    DuplicateKid(String),
    #[error("jwt key {kid:?}: secret must be at least {JWT_SECRET_LEN_MIN} bytes, is {len}")]
    SecretLength { kid: String, len: usize },
    #[error("jwt key {kid:?}: read {}", path.display())]
    KeyRead { kid: String, path: PathBuf, source: std::io::Error },
    #[error("jwt key {kid:?}: {} holds a private key; give the public key (openssl pkey -pubout)", path.display())]
    PrivateKey { kid: String, path: PathBuf },
    #[error("jwt key {kid:?}: {} is not a PEM public key for {alg:?}", path.display())]
    KeyParse { kid: String, path: PathBuf, alg: Algorithm, source: jsonwebtoken::errors::Error },
    #[error("no tokens and no jwt keys: nobody could call Flight")]
    Empty,
}

/// Why a caller was not authenticated. The messages go to the caller and
/// never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unauthenticated {
    #[error("no authorization header: send `authorization: Bearer <token>`")]
    Missing,
    #[error("authorization is not `Bearer <token>`")]
    NotBearer,
    #[error("authorization too long: {len} bytes, limit is {AUTHORIZATION_BYTES_MAX}")]
    TooLong { len: usize },
    #[error("unknown token")]
    UnknownToken,
    #[error("jwt refused: {0}")]
    Jwt(#[from] JwtRefusal),
}

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwtRefusal {
    #[error("malformed token")]
    Malformed,
    #[error("unknown kid")]
    UnknownKid,
    #[error("no kid in the header, and {n_keys} keys are configured")]
    NoKid { n_keys: usize },
    #[error("alg {alg:?} does not match the key's {expected:?}")]
    AlgMismatch { alg: Algorithm, expected: Algorithm },
    #[error("critical header extensions are not supported")]
    Critical,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    Immature,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("missing claim {0}")]
    MissingClaim(String),
    #[error("malformed claims")]
    Claims,
    #[error("claim {claim} is not admin, edge or affiliate:<id>")]
    Role { claim: String },
}

/// Why an authenticated caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    #[error("{role} may not call {call}")]
    Call { role: Role, call: Call },
    #[error("{role} may not read affiliate {affiliate_id}")]
    OtherAffiliate { role: Role, affiliate_id: u32 },
    #[error("{role} may not read {dataset}")]
    Dataset { role: Role, dataset: &'static str },
    #[error("{role} may not read quarantine: its rows have no trusted affiliate")]
    Quarantine { role: Role },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    tokens: Vec<TokenFile>,
    jwt: Option<JwtFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    name: String,
    token: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    issuer: Option<String>,
    audience: Option<String>,
    role_claim: Option<String>,
    keys: Vec<KeyFile>,
}

/// A JWT key, selected by its `alg`: a shared secret for HMAC, a public
/// key file for the others.
#[derive(Deserialize)]
#[serde(tag = "alg", deny_unknown_fields)]
enum KeyFile {
    HS256 { kid: String, secret: String },
    RS256 { kid: String, public_key_pem_file: PathBuf },
    ES256 { kid: String, public_key_pem_file: PathBuf },
}

/// The Flight tokens in force: each call reads the current set, and a
/// reload (SIGHUP) replaces it whole, so a call sees the old set or the new
/// one, never a mix. Streams already open keep going; a removed token is
/// refused from its next call on.
pub(crate) struct FlightTokens {
    current: std::sync::RwLock<std::sync::Arc<FlightAuth>>,
}

// === impl FlightTokens ===

impl FlightTokens {
    pub(crate) fn new(auth: FlightAuth) -> FlightTokens {
        FlightTokens { current: std::sync::RwLock::new(std::sync::Arc::new(auth)) }
    }

    pub(crate) fn current(&self) -> std::sync::Arc<FlightAuth> {
        // Poisoned only by a panic during a pointer swap, which cannot leave
        // a torn value.
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn replace(&self, auth: FlightAuth) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(auth);
    }
}

/// The bearer tokens and JWT keys that may call Flight.
#[derive(Clone)]
pub struct FlightAuth {
    tokens: Vec<StaticToken>,
    jwt: Option<JwtVerifier>,
}

#[derive(Clone)]
struct StaticToken {
    name: String,
    hash: TokenHash,
    role: Role,
}

#[derive(Clone)]
struct JwtVerifier {
    keys: Vec<JwtKey>,
    role_claim: String,
}

#[derive(Clone)]
struct JwtKey {
    kid: String,
    alg: Algorithm,
    decoding: DecodingKey,
    /// Built once at load: the key's algorithm only, `exp` required, and
    /// `iss` and `aud` when configured.
    validation: Validation,
}

// === impl Role ===

impl Role {
    /// Parses `admin`, `edge` or `affiliate:<id>`, the id written as
    /// `u32` renders it (no sign, no leading zero) and not 0, which no
    /// event can carry.
    pub(crate) fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "edge" => Some(Role::Edge),
            _ => {
                let digits = text.strip_prefix("affiliate:")?;
                let affiliate_id: u32 = digits.parse().ok()?;
                (affiliate_id != 0 && affiliate_id.to_string() == digits).then_some(Role::Affiliate(affiliate_id))
            }
        }
    }

    /// Whether this role may make `call` at all. Admins may do everything;
    /// affiliates may read (actions are for admins, writes for nobody but
    /// admins; Flight SQL only reads); edges only ship over QUIC.
    pub(crate) fn admit(self, call: Call) -> Result<(), Denied> {
        let allowed = match self {
            Role::Admin => true,
            Role::Affiliate(_) => match call {
                Call::Handshake
                | Call::ListFlights
                | Call::GetFlightInfo
                | Call::PollFlightInfo
                | Call::GetSchema
                | Call::DoGet
                | Call::FlightSql => true,
                Call::DoPut | Call::DoAction | Call::ListActions | Call::DoExchange => false,
            },
            Role::Edge => false,
        };
        if allowed { Ok(()) } else { Err(Denied::Call { role: self, call }) }
    }
}

impl fmt::Display for Role {
    /// As written in the tokens file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin => f.write_str("admin"),
            Role::Affiliate(affiliate_id) => write!(f, "affiliate:{affiliate_id}"),
            Role::Edge => f.write_str("edge"),
        }
    }
}

// === impl Call ===

impl Call {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Call::Handshake => "handshake",
            Call::ListFlights => "list_flights",
            Call::GetFlightInfo => "get_flight_info",
            Call::PollFlightInfo => "poll_flight_info",
            Call::GetSchema => "get_schema",
            Call::DoGet => "do_get",
            Call::DoPut => "do_put",
            Call::DoAction => "do_action",
            Call::ListActions => "list_actions",
            Call::DoExchange => "do_exchange",
            Call::FlightSql => "flight_sql",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl FlightAuth ===

impl FlightAuth {
    /// Reads the tokens file and every PEM file it names.
    pub fn load(path: &Path) -> Result<FlightAuth, FlightAuthError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| FlightAuthError::Read { path: path.to_owned(), source })?;
        let file: AuthFile =
            serde_json::from_str(&text).map_err(|source| FlightAuthError::Parse { path: path.to_owned(), source })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let mut tokens: Vec<StaticToken> = Vec::with_capacity(file.tokens.len());
        for token in file.tokens {
            tokens.push(StaticToken::new(token, &tokens)?);
        }
        let jwt = file.jwt.map(|jwt| JwtVerifier::new(jwt, base_dir)).transpose()?;
        if tokens.is_empty() && jwt.is_none() {
            return Err(FlightAuthError::Empty);
        }
        Ok(FlightAuth { tokens, jwt })
    }

    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn n_jwt_keys(&self) -> usize {
        self.jwt.as_ref().map_or(0, |jwt| jwt.keys.len())
    }

    /// The role of the caller that sent `authorization` (the header's
    /// value, if any).
    pub(crate) fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Role, Unauthenticated> {
        let authorization = authorization.ok_or(Unauthenticated::Missing)?;
        if authorization.len() > AUTHORIZATION_BYTES_MAX {
            return Err(Unauthenticated::TooLong { len: authorization.len() });
        }
        let authorization = std::str::from_utf8(authorization).map_err(|_| Unauthenticated::NotBearer)?;
        // RFC 7235: the scheme is case-insensitive, followed by one or more spaces.
        let (scheme, token) = authorization.split_once(' ').ok_or(Unauthenticated::NotBearer)?;
        let token = token.trim_start_matches(' ');
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(Unauthenticated::NotBearer);
        }
        if let Some(role) = self.static_role(token) {
            return Ok(role);
        }
        match &self.jwt {
            // A JWT is three base64url parts joined by dots; anything else
            // was meant as a static token.
            Some(jwt) if token.split('.').count() == 3 => Ok(jwt.verify(token)?),
            _ => Err(Unauthenticated::UnknownToken),
        }
    }

    /// Compares with every token, without stopping at a match, so the time
    /// taken does not tell which token matched or how many were tried.
    fn static_role(&self, token: &str) -> Option<Role> {
        let presented = TokenHash::of(token.as_bytes());
        let mut role = None;
        for candidate in &self.tokens {
            if candidate.hash.matches(&presented) {
                role = Some(candidate.role);
            }
        }
        role
    }
}

impl fmt::Debug for FlightAuth {
    /// Names and key ids only: no token, hash or secret reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokens: Vec<String> = self.tokens.iter().map(|token| format!("{}={}", token.name, token.role)).collect();
        let kids: Vec<&str> = self.jwt.iter().flat_map(|jwt| jwt.keys.iter().map(|key| key.kid.as_str())).collect();
        f.debug_struct("FlightAuth").field("tokens", &tokens).field("jwt_kids", &kids).finish()
    }
}

// === impl StaticToken ===

impl StaticToken {
    fn new(file: TokenFile, earlier: &[StaticToken]) -> Result<StaticToken, FlightAuthError> {
        let TokenFile { name, token, role } = file;
        if name.is_empty() || name.len() > TOKEN_NAME_LEN_MAX {
            return Err(FlightAuthError::NameLength { name });
        }
        if !(FLIGHT_TOKEN_LEN_MIN..=FLIGHT_TOKEN_LEN_MAX).contains(&token.len()) {
            return Err(FlightAuthError::TokenLength { name, len: token.len() });
        }
        let Some(role) = Role::parse(&role) else {
            return Err(FlightAuthError::Role { name, role });
        };
        let hash = TokenHash::of(token.as_bytes());
        for other in earlier {
            if other.name == name {
                return Err(FlightAuthError::DuplicateName(name));
            }
            if other.hash.matches(&hash) {
                return Err(FlightAuthError::DuplicateToken { name, other: other.name.clone() });
            }
        }
        Ok(StaticToken { name, hash, role })
    }
}

// === impl JwtVerifier ===

impl JwtVerifier {
    fn new(file: JwtFile, base_dir: &Path) -> Result<JwtVerifier, FlightAuthError> {
        if file.keys.is_empty() {
            return Err(FlightAuthError::NoKeys);
        }
        let role_claim = file.role_claim.unwrap_or_else(|| ROLE_CLAIM_DEFAULT.to_owned());
        if role_claim.is_empty() {
            return Err(FlightAuthError::RoleClaim);
        }
        let mut keys: Vec<JwtKey> = Vec::with_capacity(file.keys.len());
        for key_file in file.keys {
            let (kid, alg, decoding) = match key_file {
                KeyFile::HS256 { kid, secret } => {
                    if secret.len() < JWT_SECRET_LEN_MIN {
                        return Err(FlightAuthError::SecretLength { kid, len: secret.len() });
                    }
                    (kid, Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes()))
                }
                KeyFile::RS256 { kid, public_key_pem_file } => {
                    let decoding = public_key(&kid, &base_dir.join(public_key_pem_file), Algorithm::RS256)?;
                    (kid, Algorithm::RS256, decoding)
                }
                KeyFile::ES256 { kid, public_key_pem_file } => {
                    let decoding = public_key(&kid, &base_dir.join(public_key_pem_file), Algorithm::ES256)?;
                    (kid, Algorithm::ES256, decoding)
                }
            };
            if keys.iter().any(|key| key.kid == kid) {
                return Err(FlightAuthError::DuplicateKid(kid));
            }
            let validation = validation(alg, file.issuer.as_deref(), file.audience.as_deref());
            keys.push(JwtKey { kid, alg, decoding, validation });
        }
        Ok(JwtVerifier { keys, role_claim })
    }

    fn verify(&self, token: &str) -> Result<Role, JwtRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtRefusal::Malformed)?;
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|key| key.kid == *kid).ok_or(JwtRefusal::UnknownKid)?,
            None => match self.keys.as_slice() {
                [only] => only,
                keys => return Err(JwtRefusal::NoKid { n_keys: keys.len() }),
            },
        };
        // Checked here as well as by `decode` (the validation allows the
        // key's algorithm only), so the refusal says what is wrong.
        if header.alg != key.alg {
            return Err(JwtRefusal::AlgMismatch { alg: header.alg, expected: key.alg });
        }
        // RFC 7515 §4.1.11: a token that lists extensions as critical must
        // be refused by a verifier that does not know them, and we know none.
        if header.crit.is_some() {
            return Err(JwtRefusal::Critical);
        }
        let data = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(token, &key.decoding, &key.validation)
            .map_err(JwtRefusal::from_error)?;
        let claim =
            data.claims.get(&self.role_claim).ok_or_else(|| JwtRefusal::MissingClaim(self.role_claim.clone()))?;
        claim.as_str().and_then(Role::parse).ok_or_else(|| JwtRefusal::Role { claim: self.role_claim.clone() })
    }
}

/// Reads a public key for `alg` from a PEM file.
fn public_key(kid: &str, path: &Path, alg: Algorithm) -> Result<DecodingKey, FlightAuthError> {
    let pem = std::fs::read(path).map_err(|source| FlightAuthError::KeyRead {
        kid: kid.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    // jsonwebtoken reads an RSA private key as if it were the public one and
    // then fails every token; say so at start instead.
    if pem.windows(b"PRIVATE KEY-----".len()).any(|window| window == b"PRIVATE KEY-----") {
        return Err(FlightAuthError::PrivateKey { kid: kid.to_owned(), path: path.to_owned() });
    }
    let decoding = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        _ => DecodingKey::from_ec_pem(&pem),
    };
    decoding.map_err(|source| FlightAuthError::KeyParse { kid: kid.to_owned(), path: path.to_owned(), alg, source })
}

fn validation(alg: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = JWT_LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Without a configured audience, a token's `aud` is not ours to judge.
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

// === impl JwtRefusal ===

impl JwtRefusal {
    /// Keeps only the kind of a jsonwebtoken error: some of its messages
    /// quote parts of the token.
    fn from_error(error: jsonwebtoken::errors::Error) -> JwtRefusal {
        match error.into_kind() {
            ErrorKind::InvalidSignature => JwtRefusal::Signature,
            ErrorKind::ExpiredSignature => JwtRefusal::Expired,
            ErrorKind::ImmatureSignature => JwtRefusal::Immature,
            ErrorKind::InvalidIssuer => JwtRefusal::Issuer,
            ErrorKind::InvalidAudience => JwtRefusal::Audience,
            ErrorKind::MissingRequiredClaim(claim) => JwtRefusal::MissingClaim(claim),
            ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => JwtRefusal::Claims,
            _ => JwtRefusal::Malformed,
        }
    }
}

#[cfg(test)]
mod tests;
