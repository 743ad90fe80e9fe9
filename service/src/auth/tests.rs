use base64::Engine;
use fleetwatch_protocol::now_ms;

use super::*;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn config() -> AuthConfig {
    AuthConfig {
        mode: Some(AuthMode::Jwt),
        hs256_secret: Some(Secret::new(SECRET)),
        ..AuthConfig::default()
    }
}

fn claims(tenant: Option<&str>) -> Claims {
    claims_for(&AuthConfig::default(), "alice", tenant)
}

fn verify(token: Option<&str>) -> std::result::Result<Caller, AuthFailure> {
    Authenticator::new(&config()).unwrap().verify(token)
}

#[test]
fn a_good_token_names_its_tenant_and_scopes() {
    let token = mint(
        &Claims {
            scope: Some("read".into()),
            ..claims(Some("acme"))
        },
        SECRET,
    )
    .unwrap();
    let caller = verify(Some(&token)).unwrap();
    assert_eq!(caller.tenant.unwrap().as_str(), "acme");
    assert!(caller.can_read && !caller.can_command);
    let operator = verify(Some(&mint(&claims(None), SECRET).unwrap())).unwrap();
    assert!(operator.is_operator() && operator.can_command);
}

#[test]
fn every_failure_has_its_reason() {
    let good = claims(Some("acme"));
    let token = |claims: Claims| mint(&claims, SECRET).unwrap();
    let long_ago = now_ms() / 1000 - 3600;
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing"),
        (Some("not.a.jwt".into()), "malformed"),
        (Some("garbage".into()), "malformed"),
        (
            Some(token(Claims {
                exp: long_ago,
                ..good.clone()
            })),
            "expired",
        ),
        (
            Some(mint(&good, "another-secret-that-is-32-bytes-long!").unwrap()),
            "bad_signature",
        ),
        (
            Some(token(Claims {
                aud: "billing".into(),
                ..good.clone()
            })),
            "wrong_audience",
        ),
        (
            Some(token(Claims {
                iss: "someone-else".into(),
                ..good.clone()
            })),
            "wrong_issuer",
        ),
        (
            Some(token(Claims {
                tenant: None,
                ..good.clone()
            })),
            "bad_claims",
        ),
        (
            Some(token(Claims {
                tenant: Some("a/b".into()),
                ..good.clone()
            })),
            "bad_claims",
        ),
        (
            Some(token(Claims {
                role: Role::Operator,
                ..good.clone()
            })),
            "bad_claims",
        ),
        (Some(unsigned(&good)), "wrong_algorithm"),
        (
            Some(token(Claims {
                nbf: Some(now_ms() / 1000 + 3600),
                ..good.clone()
            })),
            "not_yet_valid",
        ),
    ];
    for (token, reason) in cases {
        let failure = verify(token.as_deref()).unwrap_err();
        assert_eq!(failure.reason(), reason, "{token:?}: {failure}");
        assert!(!failure.to_string().contains(SECRET));
    }
}

/// `alg: none`, the classic forgery.
fn unsigned(claims: &Claims) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = engine.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{body}.")
}

#[test]
fn published_keys_verify_es256_tokens_by_key_id() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = key.public_key_raw();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "idp-1", "use": "sig",
        "x": engine.encode(&point[1..33]), "y": engine.encode(&point[33..65]),
    }]});
    let dir = std::env::temp_dir().join(format!("fw-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let auth = Authenticator::new(&AuthConfig {
        mode: Some(AuthMode::Jwt),
        jwks_file: Some(path),
        ..AuthConfig::default()
    })
    .unwrap();
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let sign = |kid: &str| {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims(Some("acme")), &signing).unwrap()
    };
    let caller = auth.verify(Some(&sign("idp-1"))).unwrap();
    assert_eq!(caller.tenant.unwrap().as_str(), "acme");
    assert_eq!(
        auth.verify(Some(&sign("idp-2"))).unwrap_err(),
        AuthFailure::UnknownKey
    );
    let hs = mint(&claims(Some("acme")), SECRET).unwrap();
    assert_eq!(auth.verify(Some(&hs)).unwrap_err().reason(), "unknown_key");
}

#[test]
fn the_mode_must_be_chosen_and_secrets_never_show() {
    let unset = Authenticator::new(&AuthConfig::default()).err().unwrap();
    assert!(
        unset.to_string().contains("auth.mode must be chosen"),
        "{unset}"
    );
    let short = AuthConfig {
        hs256_secret: Some(Secret::new("short")),
        ..config()
    };
    assert!(Authenticator::new(&short).is_err());
    let open = Authenticator::new(&AuthConfig {
        mode: Some(AuthMode::None),
        ..AuthConfig::default()
    })
    .unwrap();
    assert!(open.verify(None).unwrap().is_operator());
    let printed = format!("{:?} {}", config(), toml::to_string(&config()).unwrap());
    assert!(!printed.contains(SECRET), "{printed}");
    assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
    assert_eq!(bearer(Some("Basic abc")), None);
    assert_eq!(
        query_token(Some("prefix=x&access_token=t1")).as_deref(),
        Some("t1")
    );
}
