//! The kubeconfig tailor-sim writes for its admin user.

use std::path::Path;

use base64::Engine;

pub fn write(path: &Path, server: &str, ca_pem: &str, token: &str) -> std::io::Result<()> {
    write_ns(path, server, ca_pem, token, "default")
}

/// The same, with the context's default namespace.
pub fn write_ns(
    path: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
    namespace: &str,
) -> std::io::Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let doc = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: tailor-sim\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: tailor-sim-admin\n  user:\n    token: {token}\ncontexts:\n- name: tailor-sim\n  context:\n    cluster: tailor-sim\n    user: tailor-sim-admin\n    namespace: {namespace}\ncurrent-context: tailor-sim\n"
    );
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc)?;
    std::fs::rename(tmp, path)
}
