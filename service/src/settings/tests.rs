//! The settings file merged with flags, on a small command shaped like the
//! binaries' own. (Environment variables are tested against the real
//! binaries, which are started with an environment of their own.)

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::{Loaded, SettingsError, load};

#[derive(Debug, Parser, PartialEq)]
struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    check_config: bool,
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: std::net::SocketAddr,
    #[arg(long, default_value_t = 250)]
    flush_interval_ms: u64,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wal_fsync: bool,
    #[arg(long)]
    verbose_refusals: bool,
    #[arg(long = "tls-name", value_delimiter = ',')]
    tls_names: Vec<String>,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

struct Settings {
    dir: tempfile::TempDir,
}

impl Settings {
    fn file(text: &str) -> Settings {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("settings.toml"), text).expect("write settings");
        Settings { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("settings.toml")
    }

    fn load(&self, flags: &[&str]) -> Result<Loaded<Args>, SettingsError> {
        let mut argv: Vec<OsString> = vec!["edgetally-test".into(), "--config".into(), self.path().into()];
        argv.extend(flags.iter().map(OsString::from));
        load::<Args>(&argv)
    }

    fn args(&self, flags: &[&str]) -> Args {
        self.load(flags).expect("the settings load").args
    }

    fn error(&self, flags: &[&str]) -> String {
        self.load(flags).expect_err("the settings are refused").to_string()
    }
}

fn defaults(data_dir: &str) -> Args {
    Args {
        config: None,
        check_config: false,
        data_dir: data_dir.into(),
        http_listen: "127.0.0.1:8080".parse().unwrap(),
        flush_interval_ms: 250,
        wal_fsync: true,
        verbose_refusals: false,
        tls_names: Vec::new(),
        tls_cert: None,
        tls_key: None,
    }
}

#[test]
fn file_values_take_the_place_of_defaults() {
    let settings = Settings::file(
        r#"
        # Comments are fine.
        data_dir = "/var/lib/edge"
        http_listen = "0.0.0.0:80"
        flush_interval_ms = 100
        wal_fsync = false
        verbose_refusals = true
        tls_name = ["edge.example", "10.0.0.1"]
        tls_cert = "/etc/cert.pem"
        tls_key = "/etc/key.pem"
        "#,
    );
    let args = settings.args(&[]);
    assert_eq!(
        args,
        Args {
            config: Some(settings.path()),
            http_listen: "0.0.0.0:80".parse().unwrap(),
            flush_interval_ms: 100,
            wal_fsync: false,
            verbose_refusals: true,
            tls_names: vec!["edge.example".into(), "10.0.0.1".into()],
            tls_cert: Some("/etc/cert.pem".into()),
            tls_key: Some("/etc/key.pem".into()),
            ..defaults("/var/lib/edge")
        }
    );
}

#[test]
fn flags_beat_the_file() {
    let settings = Settings::file("data_dir = \"/a\"\nflush_interval_ms = 100\ntls_name = [\"x\"]\n");
    let args = settings.args(&["--flush-interval-ms", "40", "--data-dir", "/b", "--tls-name", "y"]);
    assert_eq!(
        args,
        Args { config: Some(settings.path()), flush_interval_ms: 40, tls_names: vec!["y".into()], ..defaults("/b") }
    );
}

#[test]
fn an_empty_file_changes_nothing() {
    let settings = Settings::file("# every key commented out\n");
    assert_eq!(settings.args(&["--data-dir", "/d"]), Args { config: Some(settings.path()), ..defaults("/d") });
}

#[test]
fn bad_files_are_refused_naming_the_key() {
    for (text, expect) in [
        ("flush_interval_msec = 5", "unknown key `flush_interval_msec` (did you mean `flush_interval_ms`?)"),
        ("colour = 5", "unknown key `colour`"),
        ("tls_names = [\"a\"]", "unknown key `tls_names` (did you mean `tls_name`?)"),
        ("config = \"/other.toml\"", "unknown key `config`"),
        ("check_config = true", "unknown key `check_config`"),
        (
            "flush_interval_ms = \"soon\"",
            "key `flush_interval_ms`: \"soon\" is not valid: invalid digit found in string",
        ),
        ("flush_interval_ms = -1", "key `flush_interval_ms`: \"-1\" is not valid"),
        ("http_listen = \"localhost\"", "key `http_listen`: \"localhost\" is not valid"),
        ("wal_fsync = \"maybe\"", "key `wal_fsync`: \"maybe\" is not valid"),
        ("verbose_refusals = 1", "key `verbose_refusals`: must be true or false"),
        ("flush_interval_ms = [1, 2]", "key `flush_interval_ms`: takes one value, got a list of 2"),
        ("[tls]\ncert = \"x\"", "unknown key `tls`"),
        ("[tls_cert]\npath = \"x\"", "key `tls_cert`: must be a string, a number, a boolean or a list of them"),
        ("flush_interval_ms = 1979-05-27", "key `flush_interval_ms`: a date is not a setting"),
        ("flush_interval_ms = ", "settings file"),
    ] {
        let settings = Settings::file(text);
        let error = settings.error(&["--data-dir", "/d"]);
        assert!(error.contains(expect), "{text:?}: {error}");
        assert!(error.contains(&settings.path().display().to_string()), "{text:?}: {error}");
    }
}

#[test]
fn a_missing_file_and_a_missing_requirement_are_errors() {
    let settings = Settings::file("");
    std::fs::remove_file(settings.path()).unwrap();
    assert!(settings.error(&["--data-dir", "/d"]).starts_with("reading settings file"));

    let settings = Settings::file("tls_cert = \"/etc/cert.pem\"");
    let error = settings.error(&["--data-dir", "/d"]);
    assert!(error.contains("--tls-key"), "{error}");
    let settings = Settings::file("flush_interval_ms = 5");
    assert!(settings.error(&[]).contains("--data-dir"), "a required setting is still required");
}

#[test]
fn without_a_file_flags_alone_decide() {
    let argv: Vec<OsString> = ["edgetally-test", "--data-dir", "/d"].iter().map(OsString::from).collect();
    let loaded = load::<Args>(&argv).expect("loads");
    assert_eq!(loaded.file, None);
    assert_eq!(loaded.args, defaults("/d"));
}

#[test]
fn changed_names_the_settings_that_differ() {
    let settings = Settings::file("data_dir = \"/a\"\nflush_interval_ms = 100\n");
    let before = settings.load(&["--tls-name", "x"]).unwrap();
    std::fs::write(settings.path(), "data_dir = \"/b\"\nflush_interval_ms = 100\nwal_fsync = false\n").unwrap();
    let after = settings.load(&["--tls-name", "x"]).unwrap();
    assert_eq!(before.changed(&after), ["data_dir", "wal_fsync"]);
    assert!(after.changed(&after).is_empty());
}
