//! The gateway against hostile callers, with real processes: tokens that must not pass, a
//! customer reaching for another's data, a client past its rate limit. (Malformed commands get
//! 4xx and publish nothing: `checkout.rs`, `invalid_requests_get_json_errors_and_publish_nothing`.)

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use support::{System, mint, saga_id};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with `secret`, with these claims over sensible defaults.
fn signed(secret: &[u8], claims: Value) -> String {
    let mut all = json!({"sub": "c-1", "scope": "customer", "iss": "warren", "aud": "warren",
                         "exp": now() + 600});
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    jsonwebtoken::encode(
        &Header::default(),
        &all,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

/// `header.payload.` with `"alg": "none"`: a token that signs nothing.
fn unsigned(claims: Value) -> String {
    format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(claims.to_string().as_bytes())
    )
}

/// Base64url without padding, as JWTs use.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

async fn status_with(system: &System, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", system.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tokens_that_do_not_check_out_get_401_and_customers_stay_in_their_lane() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    system
        .seed(&[("SKU-1", 500, 100)], &[("c-1", 10_000), ("c-2", 10_000)])
        .await;
    let secret = std::fs::read(&system.jwt_key).unwrap();
    let path = "/v1/accounts/c-1";

    let good = mint(&system.jwt_key, "c-1", "customer").await;
    assert_eq!(status_with(&system, path, Some(&good)).await.0, 200);
    let own_signed = signed(&secret, json!({}));
    assert_eq!(status_with(&system, path, Some(&own_signed)).await.0, 200);

    let refused = [
        ("no token", None),
        (
            "alg=none",
            Some(unsigned(
                json!({"sub": "c-1", "scope": "customer", "iss": "warren",
                                  "aud": "warren", "exp": now() + 600}),
            )),
        ),
        (
            "another key",
            Some(signed(b"another-secret-of-at-least-32-bytes!!", json!({}))),
        ),
        (
            "wrong audience",
            Some(signed(&secret, json!({"aud": "elsewhere"}))),
        ),
        (
            "wrong issuer",
            Some(signed(&secret, json!({"iss": "mallory"}))),
        ),
        // Past the 30 s leeway.
        (
            "expired",
            Some(signed(&secret, json!({"exp": now() - 120}))),
        ),
        ("no expiry", Some(signed(&secret, json!({"exp": null})))),
        (
            "a made-up scope",
            Some(signed(&secret, json!({"scope": "god"}))),
        ),
        ("garbage", Some("not.a.token".to_owned())),
    ];
    for (what, token) in refused {
        let (status, body) = status_with(&system, path, token.as_deref()).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }
    // Within the leeway, an expired token still passes.
    let just_expired = signed(&secret, json!({"exp": now() - 5}));
    assert_eq!(status_with(&system, path, Some(&just_expired)).await.0, 200);

    // c-1's checkout: c-1 reads its order and saga, c-2 may not.
    let (status, answer) = system.checkout("c-1", &[("SKU-1", 1)], None).await;
    assert_eq!(status, 202);
    let saga = system.follow(&saga_id(&answer)).await.pop().unwrap();
    let order = format!("/v1/orders/{}", saga["order_id"].as_str().unwrap());
    let saga_path = format!("/v1/sagas/{}", saga["saga_id"].as_str().unwrap());
    let c2 = mint(&system.jwt_key, "c-2", "customer").await;
    for path in [order.as_str(), saga_path.as_str(), "/v1/accounts/c-1"] {
        assert_eq!(
            status_with(&system, path, Some(&good)).await.0,
            200,
            "{path}"
        );
        let (status, body) = status_with(&system, path, Some(&c2)).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (status, _) = status_with(&system, "/v1/notifications?customer_id=c-1", Some(&c2)).await;
    assert_eq!(status, 403);
    // Operator routes are not a customer's.
    assert_eq!(status_with(&system, "/v1/sagas", Some(&c2)).await.0, 403);
    assert_eq!(status_with(&system, "/ui/queues", Some(&c2)).await.0, 403);
    let put = reqwest::Client::new()
        .put(format!("{}/v1/products/SKU-1", system.base))
        .bearer_auth(&c2)
        .json(&json!({"name": "Free", "price_cents": 0, "available": 1_000_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 403);
    // Nor may a customer check out for another.
    let theirs = reqwest::Client::new()
        .post(format!("{}/v1/checkouts", system.base))
        .bearer_auth(&c2)
        .json(&json!({"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 403);
    // Health, metrics and the contract stay open.
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(status_with(&system, open, None).await.0, 200, "{open}");
    }
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas.sagas")
        .fetch_one(&system.pool)
        .await
        .unwrap();
    assert_eq!(sagas, 1, "refused checkouts started nothing");
    system.stop().await;
}

#[tokio::test]
async fn a_client_past_its_rate_limit_gets_429_with_retry_after() {
    let mut system = System::new().await;
    system.env = vec![
        ("WARREN_RATE_LIMIT".into(), "1".into()),
        ("WARREN_RATE_BURST".into(), "5".into()),
    ];
    system.spawn(&["gateway"]);
    system.ready().await;
    let customer = mint(&system.jwt_key, "c-1", "customer").await;
    let other = mint(&system.jwt_key, "c-2", "customer").await;
    // A product read is answered by the inventory service, which does not run here: what is
    // measured is the gateway letting the request through (503) or not (429).
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let response = reqwest::Client::new()
            .get(format!("{}/v1/sagas/not-a-saga", system.base))
            .bearer_auth(&customer)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
    }
    let passed = statuses.iter().filter(|s| **s != 429).count();
    assert!(
        (5..=6).contains(&passed),
        "the burst of 5 passes, the rest waits: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let seconds: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&seconds), "Retry-After {seconds}");
    // Another client has its own allowance.
    let (status, _) = status_with(&system, "/v1/sagas/not-a-saga", Some(&other)).await;
    assert_ne!(status, 429);
    system.stop().await;
}
