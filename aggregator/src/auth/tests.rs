//! Loading tokens files, authenticating static tokens and JWTs (HS256,
//! RS256 with the committed test key pair, ES256 with a key generated per
//! run), and what each role may call.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdefghijklmnop";
const AFFILIATE_7_TOKEN: &str = "affiliate-7-token-0123456789abcdefghij";
const EDGE_TOKEN: &str = "edge-token-0123456789abcdefghijklmnopq";
const HS256_SECRET: &str = "hs256-secret-0123456789abcdefghijklmn";
const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "edgetally";

const RSA_PRIVATE_PEM: &str = include_str!("testdata/rsa.key.pem");
const RSA_PUBLIC_PEM: &str = include_str!("testdata/rsa.pub.pem");

/// A tokens file with PEM files beside it, and the keys that sign for it.
struct Fixture {
    _dir: tempfile::TempDir,
    auth: FlightAuth,
    es256_private_pem: String,
}

/// The EC key goes in a subdirectory, so loading proves that PEM paths
/// are taken relative to the tokens file.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rsa.pub.pem"), RSA_PUBLIC_PEM).unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/ec.pub.pem"), ec.public_key_pem()).unwrap();
    let file = json!({
        "tokens": [
            {"name": "finance", "token": ADMIN_TOKEN, "role": "admin"},
            {"name": "aff-7", "token": AFFILIATE_7_TOKEN, "role": "affiliate:7"},
            {"name": "edge-1", "token": EDGE_TOKEN, "role": "edge"},
        ],
        "jwt": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "role_claim": "role",
            "keys": [
                {"kid": "k1", "alg": "HS256", "secret": HS256_SECRET},
                {"kid": "k2", "alg": "RS256", "public_key_pem_file": "rsa.pub.pem"},
                {"kid": "k3", "alg": "ES256", "public_key_pem_file": "keys/ec.pub.pem"},
            ],
        },
    });
    let path = dir.path().join("flight-tokens.json");
    std::fs::write(&path, file.to_string()).unwrap();
    let auth = FlightAuth::load(&path).unwrap();
    Fixture { _dir: dir, auth, es256_private_pem: ec.serialize_pem() }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Valid claims for `role`, for an hour.
fn claims(role: &str) -> serde_json::Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now_secs() + 3600, "sub": "someone", "role": role})
}

/// `claims(role)` with `changes` applied; a null removes the claim.
fn claims_with(role: &str, changes: serde_json::Value) -> serde_json::Value {
    let mut claims = claims(role);
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(kid: Option<&str>, claims: &serde_json::Value) -> String {
    sign(Algorithm::HS256, kid, &EncodingKey::from_secret(HS256_SECRET.as_bytes()), claims)
}

fn rs256(kid: Option<&str>, claims: &serde_json::Value) -> String {
    sign(Algorithm::RS256, kid, &EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap(), claims)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Authenticates `authorization` and compares the role, or the refusal's
/// message, with `expect`. A refusal never repeats the token.
#[track_caller]
fn check(auth: &FlightAuth, authorization: Option<&str>, expect: &str) {
    let actual = match auth.authenticate(authorization.map(str::as_bytes)) {
        Ok(role) => role.to_string(),
        Err(error) => {
            let message = error.to_string();
            let token = authorization.and_then(|text| text.split_once(' ')).map_or("", |(_, token)| token);
            for part in token.split('.').filter(|part| part.len() >= 8) {
                assert!(!message.contains(part), "{message:?} repeats the token");
            }
            message
        }
    };
    assert_eq!(actual, expect, "authorization {authorization:?}");
}

#[test]
fn static_tokens() {
    let fixture = fixture();
    let auth = &fixture.auth;
    check(auth, Some(&bearer(ADMIN_TOKEN)), "admin");
    check(auth, Some(&bearer(AFFILIATE_7_TOKEN)), "affiliate:7");
    check(auth, Some(&bearer(EDGE_TOKEN)), "edge");
    check(auth, Some(&format!("bearer   {ADMIN_TOKEN}")), "admin");
    check(auth, None, "no authorization header: send `authorization: Bearer <token>`");
    check(auth, Some(&format!("Basic {ADMIN_TOKEN}")), "authorization is not `Bearer <token>`");
    check(auth, Some(&format!("Bearer{ADMIN_TOKEN}")), "authorization is not `Bearer <token>`");
    check(auth, Some("Bearer "), "authorization is not `Bearer <token>`");
    check(auth, Some(&bearer("wrong-token-0123456789abcdefghijklmnop")), "unknown token");
    check(auth, Some(&bearer(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1])), "unknown token");
    check(auth, Some(&bearer(&format!("{ADMIN_TOKEN}x"))), "unknown token");
    check(auth, Some(&bearer(&"a".repeat(8192))), "authorization too long: 8199 bytes, limit is 8192");
    let not_utf8 = [b"Bearer ".as_slice(), &[0xff, 0xfe]].concat();
    assert_eq!(auth.authenticate(Some(&not_utf8)), Err(Unauthenticated::NotBearer));
}

#[test]
fn jwts() {
    let fixture = fixture();
    let auth = &fixture.auth;
    let es256 = |kid: Option<&str>, claims: &serde_json::Value| {
        let key = EncodingKey::from_ec_pem(fixture.es256_private_pem.as_bytes()).unwrap();
        sign(Algorithm::ES256, kid, &key, claims)
    };
    let jwt = |token: String| Some(bearer(&token));

    // One per algorithm and role.
    check(auth, jwt(hs256(Some("k1"), &claims("admin"))).as_deref(), "admin");
    check(auth, jwt(rs256(Some("k2"), &claims("affiliate:8"))).as_deref(), "affiliate:8");
    check(auth, jwt(es256(Some("k3"), &claims("edge"))).as_deref(), "edge");
    // `aud` may be a list that holds ours.
    let listed = claims_with("admin", json!({"aud": ["other", AUDIENCE]}));
    check(auth, jwt(hs256(Some("k1"), &listed)).as_deref(), "admin");

    // Time: `exp` is required and enforced, with a minute of leeway; `nbf`
    // is enforced when present.
    let expired = claims_with("admin", json!({"exp": now_secs() - 3600}));
    check(auth, jwt(hs256(Some("k1"), &expired)).as_deref(), "jwt refused: expired");
    let within_leeway = claims_with("admin", json!({"exp": now_secs() - 10}));
    check(auth, jwt(hs256(Some("k1"), &within_leeway)).as_deref(), "admin");
    let no_exp = claims_with("admin", json!({"exp": null}));
    check(auth, jwt(hs256(Some("k1"), &no_exp)).as_deref(), "jwt refused: missing claim exp");
    let future = claims_with("admin", json!({"nbf": now_secs() + 3600}));
    check(auth, jwt(hs256(Some("k1"), &future)).as_deref(), "jwt refused: not valid yet");

    // Signatures.
    let other_secret = EncodingKey::from_secret(b"another-secret-0123456789abcdefghijkl");
    let forged = sign(Algorithm::HS256, Some("k1"), &other_secret, &claims("admin"));
    check(auth, jwt(forged).as_deref(), "jwt refused: bad signature");
    // An affiliate's genuine token with its role swapped for admin.
    let genuine = rs256(Some("k2"), &claims("affiliate:8"));
    let (header, rest) = genuine.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;
    let admin_claims = hs256(None, &claims("admin")).split('.').nth(1).unwrap().to_owned();
    check(auth, jwt(format!("{header}.{admin_claims}.{signature}")).as_deref(), "jwt refused: bad signature");
    let es256_as_k3_by_other = {
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
        sign(Algorithm::ES256, Some("k3"), &key, &claims("admin"))
    };
    check(auth, jwt(es256_as_k3_by_other).as_deref(), "jwt refused: bad signature");

    // Keys and algorithms.
    check(auth, jwt(hs256(Some("k9"), &claims("admin"))).as_deref(), "jwt refused: unknown kid");
    check(
        auth,
        jwt(hs256(None, &claims("admin"))).as_deref(),
        "jwt refused: no kid in the header, and 3 keys are configured",
    );
    // The classic confusion: HMAC keyed with the RSA public key, under
    // the RSA key's kid.
    let confused =
        sign(Algorithm::HS256, Some("k2"), &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()), &claims("admin"));
    check(auth, jwt(confused).as_deref(), "jwt refused: alg HS256 does not match the key's RS256");
    let hs384 =
        sign(Algorithm::HS384, Some("k1"), &EncodingKey::from_secret(HS256_SECRET.as_bytes()), &claims("admin"));
    check(auth, jwt(hs384).as_deref(), "jwt refused: alg HS384 does not match the key's HS256");
    let mut critical = Header::new(Algorithm::HS256);
    critical.kid = Some("k1".into());
    critical.crit = Some(vec!["exp".into()]);
    let critical =
        jsonwebtoken::encode(&critical, &claims("admin"), &EncodingKey::from_secret(HS256_SECRET.as_bytes()));
    check(auth, jwt(critical.unwrap()).as_deref(), "jwt refused: critical header extensions are not supported");
    // `alg: none`, unsigned.
    let unsigned = format!("eyJhbGciOiJub25lIiwia2lkIjoiazEifQ.{admin_claims}.");
    check(auth, jwt(unsigned).as_deref(), "jwt refused: malformed token");
    check(auth, Some("Bearer not.a.jwt-at-all"), "jwt refused: malformed token");

    // Claims.
    for bad_role in [json!("root"), json!("affiliate:0"), json!("affiliate:07"), json!(7), json!(["admin"])] {
        let bad = claims_with("admin", json!({ "role": bad_role }));
        check(
            auth,
            jwt(hs256(Some("k1"), &bad)).as_deref(),
            "jwt refused: claim role is not admin, edge or affiliate:<id>",
        );
    }
    let no_role = claims_with("admin", json!({"role": null}));
    check(auth, jwt(hs256(Some("k1"), &no_role)).as_deref(), "jwt refused: missing claim role");
    let other_issuer = claims_with("admin", json!({"iss": "https://evil.example"}));
    check(auth, jwt(hs256(Some("k1"), &other_issuer)).as_deref(), "jwt refused: wrong issuer");
    let no_issuer = claims_with("admin", json!({"iss": null}));
    check(auth, jwt(hs256(Some("k1"), &no_issuer)).as_deref(), "jwt refused: missing claim iss");
    let other_audience = claims_with("admin", json!({"aud": "someone-else"}));
    check(auth, jwt(rs256(Some("k2"), &other_audience)).as_deref(), "jwt refused: wrong audience");
    let no_audience = claims_with("admin", json!({"aud": null}));
    check(auth, jwt(es256(Some("k3"), &no_audience)).as_deref(), "jwt refused: missing claim aud");
}

/// One key and no issuer or audience: a token without a kid uses the key,
/// `iss` and `aud` are not judged, and the role comes from `role_claim`.
#[test]
fn jwt_with_one_key_and_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flight-tokens.json");
    let file = json!({"jwt": {"role_claim": "edgetally_role", "keys": [{"kid": "only", "alg": "HS256", "secret": HS256_SECRET}]}});
    std::fs::write(&path, file.to_string()).unwrap();
    let auth = FlightAuth::load(&path).unwrap();
    assert_eq!((auth.n_tokens(), auth.n_jwt_keys()), (0, 1));
    let exp = now_secs() + 60;
    let token = |claims: serde_json::Value| Some(bearer(&hs256(None, &claims)));
    check(&auth, token(json!({"exp": exp, "edgetally_role": "affiliate:12"})).as_deref(), "affiliate:12");
    check(&auth, token(json!({"exp": exp, "edgetally_role": "admin", "iss": "x", "aud": "y"})).as_deref(), "admin");
    check(&auth, token(json!({"exp": exp, "role": "admin"})).as_deref(), "jwt refused: missing claim edgetally_role");
    check(&auth, Some(&bearer(&hs256(Some("only"), &json!({"exp": exp, "edgetally_role": "edge"})))), "edge");
    check(
        &auth,
        Some(&bearer(&hs256(Some("k1"), &json!({"exp": exp, "edgetally_role": "edge"})))),
        "jwt refused: unknown kid",
    );
    // Without static tokens, a token that is no JWT is simply unknown.
    check(&auth, Some(&bearer(ADMIN_TOKEN)), "unknown token");
}

/// Writes `file` as the tokens file (PEM files `rsa.pub.pem`,
/// `ec.pub.pem` and `ec.key.pem` beside it) and compares the error chain,
/// with the temporary directory as `DIR`, with `expect`.
#[track_caller]
fn check_load(file: serde_json::Value, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(dir.path().join("rsa.pub.pem"), RSA_PUBLIC_PEM).unwrap();
    std::fs::write(dir.path().join("ec.pub.pem"), ec.public_key_pem()).unwrap();
    std::fs::write(dir.path().join("ec.key.pem"), ec.serialize_pem()).unwrap();
    let path = dir.path().join("flight-tokens.json");
    std::fs::write(&path, file.to_string()).unwrap();
    let error = FlightAuth::load(&path).unwrap_err();
    let actual = chain(&error).replace(&dir.path().display().to_string(), "DIR");
    // serde_json's position depends on key order, which is not under test.
    let actual = actual.split(" at line ").next().unwrap();
    assert_eq!(actual, expect);
}

/// The error and its sources, as `main` prints them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text.push_str(&format!(": {error}"));
        source = error.source();
    }
    text
}

fn token(name: &str, token: &str, role: &str) -> serde_json::Value {
    json!({"name": name, "token": token, "role": role})
}

fn hs256_key(kid: &str) -> serde_json::Value {
    json!({"kid": kid, "alg": "HS256", "secret": HS256_SECRET})
}

#[test]
fn bad_files_are_errors() {
    let tokens = |list: Vec<serde_json::Value>| json!({ "tokens": list });
    let keys = |list: Vec<serde_json::Value>| json!({"jwt": { "keys": list }});

    check_load(json!({}), "no tokens and no jwt keys: nobody could call Flight");
    check_load(
        json!({"tokens": [], "extra": 1}),
        "parse DIR/flight-tokens.json: unknown field `extra`, expected `tokens` or `jwt`",
    );
    check_load(
        tokens(vec![json!({"name": "a", "token": ADMIN_TOKEN, "role": "admin", "roles": []})]),
        "parse DIR/flight-tokens.json: unknown field `roles`, expected one of `name`, `token`, `role`",
    );
    check_load(tokens(vec![token("a", "short", "admin")]), "token \"a\": token must be 32 to 256 bytes, is 5");
    check_load(tokens(vec![token("", ADMIN_TOKEN, "admin")]), "token name \"\" must be 1 to 64 bytes");
    for role in
        ["Admin", "affiliate:", "affiliate:0", "affiliate:007", "affiliate:+7", "affiliate:4294967296", "reader"]
    {
        check_load(
            tokens(vec![token("a", ADMIN_TOKEN, role)]),
            &format!(
                "token \"a\": unknown role {role:?}: expected admin, edge or affiliate:<id> with id 1 to 4294967295"
            ),
        );
    }
    check_load(
        tokens(vec![token("a", ADMIN_TOKEN, "admin"), token("a", EDGE_TOKEN, "edge")]),
        "token name \"a\" is listed twice",
    );
    check_load(
        tokens(vec![token("a", ADMIN_TOKEN, "admin"), token("b", ADMIN_TOKEN, "affiliate:3")]),
        "tokens \"b\" and \"a\" are the same token",
    );

    check_load(keys(vec![]), "jwt: keys is empty: give at least one key or leave jwt out");
    check_load(json!({"jwt": {"role_claim": "", "keys": [hs256_key("k1")]}}), "jwt: role_claim is empty");
    check_load(keys(vec![hs256_key("k1"), hs256_key("k1")]), "jwt key \"k1\" is listed twice");
    check_load(
        keys(vec![json!({"kid": "k1", "alg": "HS256", "secret": "short"})]),
        "jwt key \"k1\": secret must be at least 32 bytes, is 5",
    );
    check_load(
        keys(vec![json!({"kid": "k1", "alg": "HS512", "secret": HS256_SECRET})]),
        "parse DIR/flight-tokens.json: unknown variant `HS512`, expected one of `HS256`, `RS256`, `ES256`",
    );
    check_load(
        keys(vec![json!({"kid": "k1", "alg": "HS256", "public_key_pem_file": "rsa.pub.pem"})]),
        "parse DIR/flight-tokens.json: unknown field `public_key_pem_file`, expected `kid` or `secret`",
    );
    check_load(
        keys(vec![json!({"kid": "k2", "alg": "RS256", "public_key_pem_file": "missing.pem"})]),
        "jwt key \"k2\": read DIR/missing.pem: No such file or directory (os error 2)",
    );
    check_load(
        keys(vec![json!({"kid": "k2", "alg": "RS256", "public_key_pem_file": "ec.pub.pem"})]),
        "jwt key \"k2\": DIR/ec.pub.pem is not a PEM public key for RS256: InvalidKeyFormat",
    );
    check_load(
        keys(vec![json!({"kid": "k3", "alg": "ES256", "public_key_pem_file": "rsa.pub.pem"})]),
        "jwt key \"k3\": DIR/rsa.pub.pem is not a PEM public key for ES256: InvalidKeyFormat",
    );
    check_load(
        keys(vec![json!({"kid": "k3", "alg": "ES256", "public_key_pem_file": "ec.key.pem"})]),
        "jwt key \"k3\": DIR/ec.key.pem holds a private key; give the public key (openssl pkey -pubout)",
    );
}

#[test]
fn debug_shows_no_secret() {
    let fixture = fixture();
    let debug = format!("{:?}", fixture.auth);
    assert_eq!(
        debug,
        r#"FlightAuth { tokens: ["finance=admin", "aff-7=affiliate:7", "edge-1=edge"], jwt_kids: ["k1", "k2", "k3"] }"#
    );
}

#[track_caller]
fn check_admit(role: Role, call: Call, expect: &str) {
    let actual = match role.admit(call) {
        Ok(()) => "ok".to_owned(),
        Err(denied) => denied.to_string(),
    };
    assert_eq!(actual, expect);
}

#[test]
fn what_each_role_may_call() {
    let reads =
        [Call::Handshake, Call::ListFlights, Call::GetFlightInfo, Call::PollFlightInfo, Call::GetSchema, Call::DoGet];
    let others = [Call::DoPut, Call::DoAction, Call::ListActions, Call::DoExchange];
    for call in reads.into_iter().chain(others) {
        check_admit(Role::Admin, call, "ok");
        check_admit(Role::Edge, call, &format!("edge may not call {call}"));
    }
    for call in reads {
        check_admit(Role::Affiliate(7), call, "ok");
    }
    check_admit(Role::Affiliate(7), Call::DoPut, "affiliate:7 may not call do_put");
    check_admit(Role::Affiliate(7), Call::DoAction, "affiliate:7 may not call do_action");
    check_admit(Role::Affiliate(7), Call::ListActions, "affiliate:7 may not call list_actions");
    check_admit(Role::Affiliate(7), Call::DoExchange, "affiliate:7 may not call do_exchange");
}

#[test]
fn roles_parse_and_print() {
    for text in ["admin", "edge", "affiliate:1", "affiliate:4294967295"] {
        assert_eq!(Role::parse(text).map(|role| role.to_string()).as_deref(), Some(text));
    }
    for text in ["", "ADMIN", "affiliate", "affiliate:", "affiliate:0", "affiliate:-1", "affiliate: 7", "affiliate:7 "]
    {
        assert_eq!(Role::parse(text), None, "{text:?}");
    }
}
