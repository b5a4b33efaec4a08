//! Authentication: the admin token from the kubeconfig and ServiceAccount tokens (JWTs signed
//! with HMAC-SHA256 by the simulator, as issued by TokenRequest and mounted by the kubelet).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cluster::Cluster;

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub uid: String,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Issue a ServiceAccount token (optionally bound to a pod).
pub fn issue_token(
    cluster: &Cluster,
    ns: &str,
    sa: &str,
    sa_uid: &str,
    expiration_seconds: i64,
    pod: Option<(&str, &str)>,
    audiences: &[String],
) -> (String, i64) {
    let now = chrono::Utc::now().timestamp();
    let exp = now + expiration_seconds.max(600);
    let mut kube = json!({"namespace": ns, "serviceaccount": {"name": sa, "uid": sa_uid}});
    if let Some((pn, pu)) = pod {
        kube["pod"] = json!({"name": pn, "uid": pu});
    }
    let aud: Vec<String> = if audiences.is_empty() {
        vec![ISSUER.to_string()]
    } else {
        audiences.to_vec()
    };
    let claims = json!({
        "aud": aud, "exp": exp, "iat": now, "nbf": now, "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": kube,
    });
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing = format!("{header}.{payload}");
    let sig = URL_SAFE_NO_PAD.encode(hmac_sha256(&cluster.token_key, signing.as_bytes()));
    (format!("{signing}.{sig}"), exp)
}

/// Who is calling, from the `Authorization: Bearer` header. None means 401.
pub fn authenticate(cluster: &Cluster, header: Option<&str>) -> Option<User> {
    let token = header?.strip_prefix("Bearer ")?.trim();
    if token == cluster.admin_token {
        return Some(User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            uid: String::new(),
        });
    }
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    let expect = URL_SAFE_NO_PAD.encode(hmac_sha256(
        &cluster.token_key,
        format!("{h}.{p}").as_bytes(),
    ));
    if expect != s {
        return None;
    }
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
    if claims["exp"].as_i64()? < chrono::Utc::now().timestamp() {
        return None;
    }
    let ns = claims["kubernetes.io"]["namespace"].as_str()?;
    let sa = claims["kubernetes.io"]["serviceaccount"]["name"].as_str()?;
    let sa_uid = claims["kubernetes.io"]["serviceaccount"]["uid"].as_str()?;
    // The token dies with its ServiceAccount (and with its pod, when bound to one).
    let live = cluster.store.get("/serviceaccounts", ns, sa)?;
    if live["metadata"]["uid"].as_str() != Some(sa_uid) {
        return None;
    }
    if let Some(pod) = claims["kubernetes.io"]["pod"]["name"].as_str() {
        let p = cluster.store.get("/pods", ns, pod)?;
        if p["metadata"]["uid"].as_str() != claims["kubernetes.io"]["pod"]["uid"].as_str() {
            return None;
        }
    }
    Some(User {
        name: format!("system:serviceaccount:{ns}:{sa}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        uid: sa_uid.to_string(),
    })
}
