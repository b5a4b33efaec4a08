//! A generated certificate authority and serving certificate. The CA persists in the state dir
//! so kubeconfigs and mounted CA bundles stay valid across restarts.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct Tls {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "tailor-sim-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn ca(dir: &Path) -> anyhow::Result<(String, String)> {
    let crt = dir.join("ca.crt");
    let key = dir.join("ca.key");
    if crt.exists() && key.exists() {
        return Ok((
            std::fs::read_to_string(&crt)?,
            std::fs::read_to_string(&key)?,
        ));
    }
    let kp = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&kp)?;
    std::fs::write(&crt, cert.pem())?;
    std::fs::write(&key, kp.serialize_pem())?;
    Ok((cert.pem(), kp.serialize_pem()))
}

pub fn setup(dir: &Path, host: &str) -> anyhow::Result<Tls> {
    let (ca_pem, ca_key) = ca(dir)?;
    let ca_kp = KeyPair::from_pem(&ca_key)?;
    // Same subject and key as the stored CA certificate, so what it signs chains to it.
    let issuer = Issuer::new(ca_params()?, ca_kp);
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ];
    if !sans.iter().any(|s| s == host) {
        sans.push(host.to_string());
    }
    let mut p = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-apiserver");
    p.distinguished_name = dn;
    let kp = KeyPair::generate()?;
    let cert = p.signed_by(&kp, &issuer)?;
    let chain = vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).context("server cert")?];
    let key = PrivateKeyDer::from_pem_slice(kp.serialize_pem().as_bytes()).context("server key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        ca_pem,
        server: Arc::new(cfg),
    })
}
