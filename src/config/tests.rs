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
            (
                "SETTLED__ADMIN__TOKENS",
                "[\"abcdefghijklmnopqrstuvwxyz0123456789\"]",
            ),
        ]),
    )
    .expect("loads");
    assert_eq!(config.server.listen, "127.0.0.1:0");
    assert_eq!(config.billing.retry_days, vec![2, 4]);
    assert_eq!(config.clock.mode, ClockMode::Manual);
    assert_eq!(config.clock.start, "2027-01-01T00:00:00Z");
    let tokens = config.admin_tokens().unwrap();
    assert_eq!(
        tokens[0].secret.expose(),
        "abcdefghijklmnopqrstuvwxyz0123456789"
    );
    assert_eq!(tokens[0].name, "token-1");
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

const LONG_A: &str = "alice-0123456789abcdef0123456789abcdef";
const LONG_B: &str = "bob-0123456789abcdef0123456789abcdef01";

#[test]
fn admin_tokens_have_names_old_forms_included_and_a_minimum_length() {
    let dir = tempfile::tempdir().unwrap();
    let bob = dir.path().join("bob-token");
    std::fs::write(&bob, format!("{LONG_B}\n")).unwrap();
    let lines = dir.path().join("tokens");
    std::fs::write(
        &lines,
        "# two old ones\nline-one-0123456789abcdef0123456789\n",
    )
    .unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\ntokens_file = {:?}\n[[admin.tokens]]\nname = \"alice\"\ntoken = {LONG_A:?}\n\
             [[admin.tokens]]\nname = \"bob\"\ntoken_file = {:?}\n",
            lines.display().to_string(),
            bob.display().to_string()
        ),
    )
    .unwrap();
    let config = Config::load_from(Some(&path), env(&[])).unwrap();
    let tokens: Vec<(String, String)> = config
        .admin_tokens()
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.secret.expose().to_string()))
        .collect();
    assert_eq!(
        tokens,
        vec![
            ("alice".to_string(), LONG_A.to_string()),
            ("bob".to_string(), LONG_B.to_string()),
            (
                "token-1".to_string(),
                "line-one-0123456789abcdef0123456789".to_string()
            ),
        ]
    );
    // The old list form through the environment still works, named by its place.
    let config = Config::load_from(
        None,
        env(&[(
            "SETTLED__ADMIN__TOKENS",
            &format!("[\"{LONG_A}\", \"{LONG_B}\"]"),
        )]),
    )
    .unwrap();
    let names: Vec<String> = config
        .admin_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["token-1", "token-2"]);
    // Too short in the plain list: accepted (the contract's form), with a warning at start.
    let config = Config::load_from(
        None,
        env(&[("SETTLED__ADMIN__TOKENS", "[\"short-secret-xyz\"]")]),
    )
    .unwrap();
    assert_eq!(config.admin_tokens().unwrap().len(), 1);
    // Too short as a named token, inline or in a file: refused, naming it, never printing it.
    std::fs::write(&bob, "tiny-secret-abc\n").unwrap();
    let config = Config::load_from(Some(&path), env(&[])).unwrap();
    let text = format!("{:#}", config.admin_tokens().unwrap_err());
    assert!(text.contains("\"bob\"") && text.contains("32"), "{text}");
    assert!(!text.contains("tiny-secret-abc"), "{text}");
    let inline = dir.path().join("inline.toml");
    std::fs::write(
        &inline,
        "[[admin.tokens]]\nname = \"carol\"\ntoken = \"short-inline-xyz\"\n",
    )
    .unwrap();
    let text = format!(
        "{:#}",
        Config::load_from(Some(&inline), env(&[])).unwrap_err()
    );
    assert!(text.contains("\"carol\"") && text.contains("32"), "{text}");
    assert!(!text.contains("short-inline-xyz"), "{text}");
}

#[test]
fn secrets_from_the_environment_are_strings_and_never_echoed() {
    // A numeric password is the password, not a TOML integer.
    let config = Config::load_from(
        None,
        env(&[
            ("SETTLED__EMAIL__SMTP_PASSWORD", "123456"),
            ("SETTLED__STRIPE__API_KEY", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(config.smtp_password().unwrap().expose(), "123456");
    assert_eq!(config.stripe_api_key().unwrap().expose(), "true");
    // A bare (non-list) value for a list of secrets is one secret.
    let config = Config::load_from(
        None,
        env(&[("SETTLED__STRIPE__WEBHOOK_SECRETS", "whsec_plain_9931")]),
    )
    .unwrap();
    assert_eq!(
        config.stripe_webhook_secrets().unwrap()[0].expose(),
        "whsec_plain_9931"
    );
    // A bad URL never shows its password; a wrong type never shows the value.
    let err = Config::load_from(
        None,
        env(&[("SETTLED__DATABASE__URL", "mysql://u:hunter2pw@db/x")]),
    )
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("database.url") && text.contains("***"),
        "{text}"
    );
    assert!(!text.contains("hunter2pw"), "{text}");
    let err = Config::load_from(
        None,
        env(&[(
            "SETTLED__EMAIL__SMTP_URL",
            "smtp://u:hunter3pw@mail.example.com:25",
        )]),
    )
    .unwrap_err();
    assert!(!format!("{err:#}").contains("hunter3pw"), "{err:#}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[stripe]\napi_key = 987654321\n").unwrap();
    let text = format!(
        "{:#}",
        Config::load_from(Some(&path), env(&[])).unwrap_err()
    );
    assert!(text.contains("stripe.api_key"), "{text}");
    assert!(!text.contains("987654321"), "{text}");
    std::fs::write(&path, "[stripe]\napi_key = sk_live_unquoted55\n").unwrap();
    let text = format!(
        "{:#}",
        Config::load_from(Some(&path), env(&[])).unwrap_err()
    );
    assert!(!text.contains("sk_live_unquoted55"), "{text}");
}

#[test]
fn urls_are_printed_without_their_password() {
    assert_eq!(
        redact_url("postgres://settled:s3cret@db.example/settled"),
        "postgres://settled:***@db.example/settled"
    );
    assert_eq!(
        redact_url("smtp://user:pa:ss@mail:587?tls=required"),
        "smtp://user:***@mail:587?tls=required"
    );
    assert_eq!(
        redact_url("postgres://settled@db/x"),
        "postgres://settled@db/x"
    );
    assert_eq!(redact_url("not a url://a:b@c"), "not a url://a:***@c");
}

#[test]
fn a_standard_webhooks_secrets_file_that_does_not_decode_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bank-secrets");
    std::fs::write(&file, "whsec_Zmlyc3Q=\nwhsec_not base64!\n").unwrap();
    let config = Config::load_from(
        None,
        env(&[(
            "SETTLED__STANDARD_WEBHOOKS__SOURCES__BANK__SECRETS_FILE",
            &file.display().to_string(),
        )]),
    )
    .unwrap();
    let text = format!("{:#}", config.standard_webhook_secrets("bank").unwrap_err());
    assert!(
        text.contains("bank-secrets") && text.contains("line 2"),
        "{text}"
    );
    assert!(!text.contains("not base64"), "{text}");
}
