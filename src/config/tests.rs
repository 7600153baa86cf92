use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn embedded_defaults_are_valid() {
    let config = Config::load_from(None, env(&[])).expect("defaults load");
    assert_eq!(config.billing.retry_days, vec![1, 3, 5, 7]);
    assert_eq!(config.clock.mode, ClockMode::System);
}

#[test]
fn env_overrides_the_defaults_with_typed_values() {
    let config = Config::load_from(
        None,
        env(&[
            ("SETTLED__SERVER__LISTEN", "127.0.0.1:0"),
            ("SETTLED__BILLING__RETRY_DAYS", "[2, 4]"),
            ("SETTLED__CLOCK__MODE", "manual"),
            ("SETTLED__CLOCK__START", "2027-01-01T00:00:00Z"),
            ("SETTLED__ADMIN__TOKENS", "[\"abc\"]"),
        ]),
    )
    .expect("loads");
    assert_eq!(config.server.listen, "127.0.0.1:0");
    assert_eq!(config.billing.retry_days, vec![2, 4]);
    assert_eq!(config.clock.mode, ClockMode::Manual);
    assert_eq!(config.clock.start, "2027-01-01T00:00:00Z");
    assert_eq!(config.admin_tokens().unwrap()[0].expose(), "abc");
}

#[test]
fn a_typo_in_a_key_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[server]\nlistn = \"127.0.0.1:1\"\n").unwrap();
    let err = Config::load_from(Some(&path), env(&[])).unwrap_err();
    assert!(format!("{err}").contains("listn"), "{err}");
}

#[test]
fn a_bad_value_names_the_key_and_the_problem() {
    let err = Config::load_from(None, env(&[("SETTLED__DATABASE__URL", "mysql://x")])).unwrap_err();
    let text = format!("{err}");
    assert!(text.contains("database.url"), "{text}");
    let err =
        Config::load_from(None, env(&[("SETTLED__JOBS__CONCURRENCY", "\"many\"")])).unwrap_err();
    assert!(format!("{err}").contains("jobs.concurrency"), "{err}");
}

#[test]
fn secrets_never_print() {
    let config = Config::load_from(
        None,
        env(&[("SETTLED__STRIPE__API_KEY", "sk_test_supersecret")]),
    )
    .unwrap();
    let printed = format!("{config:?}");
    assert!(!printed.contains("supersecret"));
    assert_eq!(
        config.stripe_api_key().unwrap().expose(),
        "sk_test_supersecret"
    );
}

#[test]
fn standard_webhook_secrets_come_inline_and_from_a_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bank-secrets");
    std::fs::write(&file, "# rotated 2027-01\nwhsec_c2Vjb25k\n").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[standard_webhooks.sources.bank]\nsecrets = [\"whsec_Zmlyc3Q=\"]\nsecrets_file = {:?}\n",
            file.display().to_string()
        ),
    )
    .unwrap();
    let config = Config::load_from(Some(&path), env(&[])).unwrap();
    let secrets: Vec<String> = config
        .standard_webhook_secrets("bank")
        .unwrap()
        .iter()
        .map(|s| s.expose().to_string())
        .collect();
    assert_eq!(secrets, vec!["whsec_Zmlyc3Q=", "whsec_c2Vjb25k"]);
    assert!(config.standard_webhook_secrets("other").unwrap().is_empty());
    std::fs::remove_file(&file).unwrap();
    let err = Config::load_from(Some(&path), env(&[])).unwrap_err();
    assert!(
        format!("{err}").contains("standard_webhooks.sources.bank.secrets_file"),
        "{err}"
    );
}

#[test]
fn plain_smtp_is_for_the_local_machine_unless_asked_for() {
    for ok in [
        "smtp://127.0.0.1:2525",
        "smtp://localhost",
        "smtp://[::1]:25",
        "smtps://mail.example.com",
        "smtp://mail.example.com:587?tls=required",
        "smtp://relay.internal:25?tls=none",
    ] {
        Config::load_from(None, env(&[("SETTLED__EMAIL__SMTP_URL", ok)]))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "smtp://mail.example.com:25",
        "smtp://x?tls=sometimes",
        "http://x",
    ] {
        let err = Config::load_from(None, env(&[("SETTLED__EMAIL__SMTP_URL", bad)])).unwrap_err();
        assert!(format!("{err}").contains("email.smtp_url"), "{bad}: {err}");
    }
    let err =
        Config::load_from(None, env(&[("SETTLED__EMAIL__FROM", "not an address")])).unwrap_err();
    assert!(format!("{err}").contains("email.from"), "{err}");
}

#[test]
fn standard_webhook_sources_need_base64_secrets_and_a_free_name() {
    let err = Config::load_from(
        None,
        env(&[(
            "SETTLED__STANDARD_WEBHOOKS__SOURCES__BANK__SECRETS",
            "[\"whsec_not base64!\"]",
        )]),
    )
    .unwrap_err();
    assert!(
        format!("{err}").contains("standard_webhooks.sources.bank.secrets"),
        "{err}"
    );
    let err = Config::load_from(
        None,
        env(&[(
            "SETTLED__STANDARD_WEBHOOKS__SOURCES__STRIPE__SECRETS",
            "[\"whsec_Zmlyc3Q=\"]",
        )]),
    )
    .unwrap_err();
    assert!(
        format!("{err}").contains("standard_webhooks.sources.stripe"),
        "{err}"
    );
}

#[test]
fn sqlite_is_the_default_database_in_the_state_dir() {
    let config = Config::load_from(None, env(&[("SETTLED__DAEMON__STATE_DIR", "/tmp/x")])).unwrap();
    assert_eq!(
        config.database_kind().unwrap(),
        DatabaseKind::Sqlite(PathBuf::from("/tmp/x/settled.db"))
    );
}
