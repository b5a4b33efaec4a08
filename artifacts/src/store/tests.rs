use super::*;
use object_store::aws::AmazonS3ConfigKey as S3;
use object_store::azure::AzureConfigKey as Az;
use object_store::gcp::GoogleConfigKey as Gcs;

#[test]
fn s3_configuration_comes_from_the_given_map_only() {
    let env = Env::from_pairs([
        ("AWS_ACCESS_KEY_ID", "AKIAFROMMAP"),
        ("AWS_SECRET_ACCESS_KEY", "secretfrommap"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "eu-west-3"),
        ("UNRELATED", "x"),
    ]);
    let b = s3_builder("bucket", &env);
    assert_eq!(
        b.get_config_value(&S3::AccessKeyId).as_deref(),
        Some("AKIAFROMMAP")
    );
    assert_eq!(
        b.get_config_value(&S3::Endpoint).as_deref(),
        Some("http://127.0.0.1:9000")
    );
    assert_eq!(
        b.get_config_value(&S3::Region).as_deref(),
        Some("eu-west-3")
    );
    assert_eq!(b.get_config_value(&S3::Bucket).as_deref(), Some("bucket"));
    assert!(b.build().is_ok());
}

#[test]
fn s3_credentials_file_profile() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = d\n\n[profile ci]\naws_access_key_id=AKIACI\naws_secret_access_key=c\naws_session_token = t\n",
    )
    .expect("write");
    let env = Env::from_pairs([
        ("AWS_SHARED_CREDENTIALS_FILE", file.to_str().expect("utf8")),
        ("AWS_PROFILE", "ci"),
    ]);
    let b = s3_builder("b", &env);
    assert_eq!(
        b.get_config_value(&S3::AccessKeyId).as_deref(),
        Some("AKIACI")
    );
    assert_eq!(b.get_config_value(&S3::Token).as_deref(), Some("t"));
    // Variables win over the file.
    let env = Env::from_pairs([
        ("AWS_SHARED_CREDENTIALS_FILE", file.to_str().expect("utf8")),
        ("AWS_ACCESS_KEY_ID", "AKIAVAR"),
    ]);
    let b = s3_builder("b", &env);
    assert_eq!(
        b.get_config_value(&S3::AccessKeyId).as_deref(),
        Some("AKIAVAR")
    );
}

/// No GCS server runs here: this proves the map reaches object_store's builder and that
/// its refusals name the problem without the secret.
#[test]
fn gcs_configuration_from_application_credentials_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let creds = dir.path().join("adc.json");
    std::fs::write(
        &creds,
        r#"{"type":"authorized_user","client_id":"id.apps.googleusercontent.com","client_secret":"gcs-client-secret-value","refresh_token":"gcs-refresh-token-value"}"#,
    )
    .expect("write");
    let env = Env::from_pairs([(
        "GOOGLE_APPLICATION_CREDENTIALS",
        creds.to_str().expect("utf8"),
    )]);
    let b = gcs_builder("models", &env);
    assert_eq!(
        b.get_config_value(&Gcs::ApplicationCredentials).as_deref(),
        creds.to_str()
    );
    assert_eq!(b.get_config_value(&Gcs::Bucket).as_deref(), Some("models"));
    assert!(b.build().is_ok(), "authorized_user credentials file");
    let ctx = Context::new(env);
    let store = Store::open(&ArtifactUri::parse("gs://models/base").expect("uri"), &ctx);
    assert!(store.is_ok());

    let bad = Env::from_pairs([(
        "GOOGLE_APPLICATION_CREDENTIALS",
        dir.path().join("missing.json").to_str().expect("utf8"),
    )]);
    let e = Store::open(
        &ArtifactUri::parse("gs://models/base").expect("uri"),
        &Context::new(bad),
    )
    .expect_err("missing credentials file");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(
        e.to_string().starts_with("gs://models/base: Invalid: "),
        "{e}"
    );
}

#[test]
fn azure_configuration_from_account_key_and_sas() {
    let env = Env::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", "tailoracct"),
        // base64 of "not a real key, but base64"
        (
            "AZURE_STORAGE_ACCOUNT_KEY",
            "bm90IGEgcmVhbCBrZXksIGJ1dCBiYXNlNjQ=",
        ),
    ]);
    let b = azure_builder("adapters", None, &env);
    assert_eq!(
        b.get_config_value(&Az::AccountName).as_deref(),
        Some("tailoracct")
    );
    assert_eq!(
        b.get_config_value(&Az::ContainerName).as_deref(),
        Some("adapters")
    );
    assert!(b.build().is_ok());
    // The account in an abfss:// URI wins over the variable.
    let b = azure_builder("fs", Some("fromuri"), &env);
    assert_eq!(
        b.get_config_value(&Az::AccountName).as_deref(),
        Some("fromuri")
    );

    let sas = Env::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", "tailoracct"),
        (
            "AZURE_STORAGE_SAS_TOKEN",
            "sv=2022-11-02&ss=b&sig=c2FzLXNpZ25hdHVyZQ%3D%3D",
        ),
    ]);
    assert!(azure_builder("adapters", None, &sas).build().is_ok());

    // A key that is not base64: refused, and the refusal does not repeat the key.
    let bad = Env::from_pairs([
        ("AZURE_STORAGE_ACCOUNT_NAME", "tailoracct"),
        ("AZURE_STORAGE_ACCOUNT_KEY", "not-base64-secret!!"),
    ]);
    let e = Store::open(
        &ArtifactUri::parse("az://adapters/a").expect("uri"),
        &Context::new(bad),
    )
    .expect_err("bad key");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(!e.to_string().contains("not-base64-secret!!"), "{e}");
}

#[test]
fn local_stores_resolve_claims() {
    let mut ctx = Context::default();
    ctx.pvc_mounts.insert("data".into(), "/mnt/data".into());
    ctx.pvc_root = Some("/claims".into());
    let p = |s: &str| {
        ctx.local_path(&ArtifactUri::parse(s).expect("uri"))
            .expect("ok")
    };
    assert_eq!(p("pvc://data/x/y"), Some(PathBuf::from("/mnt/data/x/y")));
    assert_eq!(p("pvc://other/z"), Some(PathBuf::from("/claims/other/z")));
    assert_eq!(p("s3://bkt/k"), None);
    let e = Context::default()
        .local_path(&ArtifactUri::parse("pvc://nope/x").expect("uri"))
        .expect_err("unmounted");
    assert!(e.to_string().contains("not mounted"), "{e}");
}
