//! The generated identity is created once, private, and reused.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn config(data_dir: &Path) -> Config {
    Config { tls_names: vec!["edge.example".into(), "localhost".into()], ..crate::tests::loopback_config(data_dir) }
}

#[test]
fn generated_once_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let first = load_or_generate(&config).unwrap();
    assert_eq!(first.cert_path, dir.path().join(CERT_FILE_NAME));
    assert!(first.cert_path.is_absolute());
    let key_path = dir.path().join(KEY_FILE_NAME);
    assert_eq!(fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    let cert_pem = fs::read(&first.cert_path).unwrap();
    let key_pem = fs::read(&key_path).unwrap();

    let second = load_or_generate(&config).unwrap();
    assert_eq!(second.cert_chain, first.cert_chain);
    assert_eq!(fs::read(&second.cert_path).unwrap(), cert_pem);
    assert_eq!(fs::read(&key_path).unwrap(), key_pem);
    let n_files = fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(n_files, 2, "no temp files are left behind");
}

#[test]
fn lone_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    fs::write(dir.path().join(CERT_FILE_NAME), "stale").unwrap();
    let identity = load_or_generate(&config).unwrap();
    assert_eq!(identity.cert_chain.len(), 1);
}

#[test]
fn operator_files() {
    let dir = tempfile::tempdir().unwrap();
    let generated = load_or_generate(&config(dir.path())).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let mut config = config(other_dir.path());
    config.tls_cert = Some(dir.path().join(CERT_FILE_NAME));
    config.tls_key = Some(dir.path().join(KEY_FILE_NAME));
    let loaded = load_or_generate(&config).unwrap();
    assert_eq!(loaded.cert_chain, generated.cert_chain);
    assert_eq!(fs::read_dir(other_dir.path()).unwrap().count(), 0, "nothing generated");

    config.tls_key = None;
    assert!(matches!(load_or_generate(&config), Err(CertError::Incomplete)));
    config.tls_key = Some(dir.path().join("missing.pem"));
    assert!(matches!(load_or_generate(&config), Err(CertError::Read { .. })));
}

#[test]
fn flight_tls_takes_a_matching_pair_and_refuses_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for name in [&a, &b] {
        fs::create_dir(name).unwrap();
        generate(&name.join(CERT_FILE_NAME), &name.join(KEY_FILE_NAME), &[]).unwrap();
    }
    let files = |cert: &Path, key: &Path| TlsFiles { cert: cert.join(CERT_FILE_NAME), key: key.join(KEY_FILE_NAME) };
    flight_tls(&files(&a, &a)).unwrap();
    match flight_tls(&files(&a, &b)) {
        Err(CertError::Unusable { cert_path, key_path, .. }) => {
            assert_eq!(cert_path, a.join(CERT_FILE_NAME));
            assert_eq!(key_path, b.join(KEY_FILE_NAME));
        }
        other => panic!("a key of another certificate: {:?}", other.map(|_| ())),
    }
    match flight_tls(&files(&a, &dir.path().join("missing"))) {
        Err(CertError::Read { path, .. }) => assert_eq!(path, dir.path().join("missing").join(KEY_FILE_NAME)),
        other => panic!("a missing key: {:?}", other.map(|_| ())),
    }
}
