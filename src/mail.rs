//! Mail transports with lettre: SMTP (`email.smtp_url`, STARTTLS, implicit TLS or plain for
//! localhost, AUTH from config or credentials) or, when no server is configured, a folder of .eml
//! files in the state directory so a local run shows real messages.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as LettreAttachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use settled_jobs::mailer::{MailError, Mailer, OutgoingEmail};

use crate::config::Config;

pub enum LettreMailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

impl LettreMailer {
    pub fn from_config(config: &Config) -> anyhow::Result<LettreMailer> {
        if config.email.smtp_url.is_empty() {
            let dir = config.state_dir().join("mail");
            return Ok(LettreMailer::File(AsyncFileTransport::new(&dir), dir));
        }
        let url = lettre_url(&config.email.smtp_url)?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .context("email.smtp_url is not a usable SMTP url")?
            .timeout(Some(Duration::from_secs(
                config.email.smtp_timeout_seconds.max(1),
            )));
        let password = config.smtp_password()?;
        if !config.email.smtp_username.is_empty() {
            builder = builder.credentials(Credentials::new(
                config.email.smtp_username.clone(),
                password.expose().to_string(),
            ));
        }
        // As many pooled connections as messages in flight, so none waits for a connection.
        let pool = lettre::transport::smtp::PoolConfig::new()
            .max_size(config.email.max_sends_in_flight.clamp(1, u32::MAX as usize) as u32);
        Ok(LettreMailer::Smtp(builder.pool_config(pool).build()))
    }

    /// The folder of the file transport, if that is the one in use.
    pub fn folder(&self) -> Option<&PathBuf> {
        match self {
            LettreMailer::File(_, dir) => Some(dir),
            LettreMailer::Smtp(_) => None,
        }
    }
}

/// lettre reads `smtp://` as plain SMTP, `?tls=required` as STARTTLS and `smtps://` as implicit
/// TLS; `?tls=none` (our spelling for "plain, on purpose") is dropped before it sees the URL.
fn lettre_url(raw: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(raw).context("email.smtp_url is not a URL")?;
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, v)| !(k == "tls" && v == "none"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    Ok(url.to_string())
}

/// A MIME boundary derived from the Message-ID, so a resend is the same bytes.
fn boundary(message_id: &str, part: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{message_id}/{part}").as_bytes());
    format!("=_settled_{part}_{}", hex::encode(&digest[..12]))
}

fn mailbox(field: &str, s: &str) -> Result<Mailbox, MailError> {
    s.parse()
        .map_err(|e| MailError::Permanent(format!("{field} address {s:?} is unusable: {e}")))
}

/// Builds the MIME message: text and HTML alternatives, then the attachments.
pub fn build_message(email: &OutgoingEmail) -> Result<Message, MailError> {
    if email.to.is_empty() {
        return Err(MailError::Permanent("the message has no recipient".into()));
    }
    let mut builder = Message::builder()
        .from(mailbox("from", &email.from)?)
        .subject(email.subject.clone())
        .message_id(Some(email.message_id.clone()));
    if let Some(date) = email.date {
        builder = builder.date(date.into());
    }
    if let Some(reply_to) = &email.reply_to {
        builder = builder.reply_to(mailbox("reply-to", reply_to)?);
    }
    for to in &email.to {
        builder = builder.to(mailbox("to", to)?);
    }
    let text = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(email.text.clone());
    let body = match &email.html {
        Some(html) => MultiPart::alternative()
            .boundary(boundary(&email.message_id, "alt"))
            .singlepart(text)
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(html.clone()),
            ),
        None => MultiPart::mixed()
            .boundary(boundary(&email.message_id, "body"))
            .singlepart(text),
    };
    let body = if email.attachments.is_empty() {
        body
    } else {
        let mut mixed = MultiPart::mixed()
            .boundary(boundary(&email.message_id, "mixed"))
            .multipart(body);
        for a in &email.attachments {
            let content_type = ContentType::parse(&a.content_type).map_err(|e| {
                MailError::Permanent(format!("attachment {}: bad content type: {e}", a.filename))
            })?;
            mixed = mixed.singlepart(
                LettreAttachment::new(a.filename.clone()).body(a.bytes.clone(), content_type),
            );
        }
        mixed
    };
    let mut message = builder
        .multipart(body)
        .map_err(|e| MailError::Permanent(format!("cannot build the message: {e}")))?;
    // A header naming the daemon helps an operator trace a message back to its outbox row.
    message.headers_mut().insert_raw(HeaderValue::new(
        HeaderName::new_from_ascii_str("X-Mailer"),
        "settled".to_string(),
    ));
    Ok(message)
}

impl LettreMailer {
    /// `check-config --connect`: for SMTP a connection with EHLO, TLS as configured and AUTH
    /// when a username is set, then QUIT, no message; for the file transport that its folder can
    /// be made. What was checked, or why it failed (never the password).
    pub async fn check(&self) -> anyhow::Result<String> {
        match self {
            LettreMailer::Smtp(t) => {
                let ok = t
                    .test_connection()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                anyhow::ensure!(ok, "the server did not answer NOOP after EHLO");
                Ok("connected: EHLO, TLS as configured and AUTH when a username is set".into())
            }
            LettreMailer::File(_, dir) => {
                // Checked without creating anything: the folder, or the nearest one above it
                // that exists, must be writable (the daemon makes the rest at its first send).
                let existing = dir
                    .ancestors()
                    .find(|p| p.as_os_str().is_empty() || p.exists())
                    .map(|p| {
                        if p.as_os_str().is_empty() {
                            std::path::Path::new(".")
                        } else {
                            p
                        }
                    })
                    .unwrap_or(dir);
                let writable = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
                    // SAFETY: access only reads the NUL-terminated path it is given.
                    .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0);
                anyhow::ensure!(writable, "{} is not writable", existing.display());
                Ok(format!("file transport into {}", dir.display()))
            }
        }
    }
}

#[async_trait]
impl Mailer for LettreMailer {
    async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError> {
        let started = std::time::Instant::now();
        let result = self.deliver(email).await;
        let transport = match self {
            LettreMailer::Smtp(_) => "smtp",
            LettreMailer::File(..) => "file",
        };
        let outcome = match &result {
            Ok(()) => "sent",
            Err(MailError::Transient(_)) => "temporary",
            Err(_) => "permanent",
        };
        crate::metrics::smtp_request(transport, outcome, started.elapsed());
        result
    }
}

impl LettreMailer {
    async fn deliver(&self, email: &OutgoingEmail) -> Result<(), MailError> {
        let message = build_message(email)?;
        match self {
            LettreMailer::Smtp(t) => t.send(message).await.map(|_| ()).map_err(|e| {
                if e.is_permanent() {
                    MailError::Permanent(e.to_string())
                } else {
                    MailError::Transient(e.to_string())
                }
            }),
            LettreMailer::File(t, dir) => {
                tokio::fs::create_dir_all(dir).await.map_err(|e| {
                    MailError::Transient(format!("cannot create {}: {e}", dir.display()))
                })?;
                t.send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| MailError::Transient(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    fn email() -> OutgoingEmail {
        OutgoingEmail {
            message_id: "<receipt.pay_1.0@settled>".into(),
            date: Some("2027-02-01T10:00:00Z".parse().unwrap()),
            from: "Billing <billing@example.com>".into(),
            reply_to: Some("support@example.com".into()),
            to: vec!["ap@acme.example".into(), "cfo@acme.example".into()],
            subject: "Receipt for INV-2027-000042".into(),
            text: "Thank you for your payment.".into(),
            html: Some("<p>Thank you for your payment.</p>".into()),
            attachments: vec![settled_jobs::mailer::Attachment {
                filename: "receipt.pdf".into(),
                content_type: "application/pdf".into(),
                bytes: b"%PDF-1.4 test".to_vec(),
            }],
        }
    }

    fn config(env: &[(&str, &str)]) -> Config {
        Config::load_from(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_file_transport_writes_one_eml_per_message_into_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().display().to_string();
        let mailer =
            LettreMailer::from_config(&config(&[("SETTLED__DAEMON__STATE_DIR", &state)])).unwrap();
        mailer.send(&email()).await.unwrap();
        let folder = mailer.folder().unwrap().clone();
        let files: Vec<_> = std::fs::read_dir(&folder).unwrap().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
        assert!(
            text.contains("Subject: Receipt for INV-2027-000042"),
            "{text}"
        );
        assert!(
            text.contains("Message-ID: <receipt.pay_1.0@settled>"),
            "{text}"
        );
        assert!(
            text.contains("text/plain") && text.contains("text/html"),
            "{text}"
        );
        assert!(text.contains("receipt.pdf"), "{text}");
    }

    /// A minimal SMTP server: answers `rcpt_reply` to RCPT TO and records accepted messages.
    async fn smtp_server(rcpt_reply: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let store = got.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut lines = BufReader::new(r).lines();
                    w.write_all(b"220 test ESMTP\r\n").await.unwrap();
                    let mut data = String::new();
                    let mut in_data = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if in_data {
                            if line == "." {
                                in_data = false;
                                store.lock().unwrap().push(std::mem::take(&mut data));
                                w.write_all(b"250 queued\r\n").await.unwrap();
                            } else {
                                data.push_str(&line);
                                data.push('\n');
                            }
                            continue;
                        }
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") {
                            b"250-test\r\n250 8BITMIME\r\n"
                        } else if upper.starts_with("RCPT") {
                            rcpt_reply.as_bytes()
                        } else if upper.starts_with("DATA") {
                            in_data = true;
                            b"354 go ahead\r\n"
                        } else if upper.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        };
                        w.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        (port, got)
    }

    #[tokio::test]
    async fn smtp_delivers_and_classifies_refusals() {
        let (port, got) = smtp_server("250 ok\r\n").await;
        let url = format!("smtp://127.0.0.1:{port}");
        let mailer =
            LettreMailer::from_config(&config(&[("SETTLED__EMAIL__SMTP_URL", &url)])).unwrap();
        mailer.send(&email()).await.unwrap();
        let messages = got.lock().unwrap().clone();
        assert_eq!(messages.len(), 1);
        assert!(messages[0].contains("Subject: Receipt for INV-2027-000042"));

        let (port, _) = smtp_server("550 no such user\r\n").await;
        let url = format!("smtp://127.0.0.1:{port}");
        let mailer =
            LettreMailer::from_config(&config(&[("SETTLED__EMAIL__SMTP_URL", &url)])).unwrap();
        assert!(matches!(
            mailer.send(&email()).await,
            Err(MailError::Permanent(_))
        ));

        let (port, _) = smtp_server("451 try later\r\n").await;
        let url = format!("smtp://127.0.0.1:{port}");
        let mailer =
            LettreMailer::from_config(&config(&[("SETTLED__EMAIL__SMTP_URL", &url)])).unwrap();
        assert!(matches!(
            mailer.send(&email()).await,
            Err(MailError::Transient(_))
        ));

        // Nobody listening: a connection error is worth retrying.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("smtp://127.0.0.1:{closed}");
        let mailer =
            LettreMailer::from_config(&config(&[("SETTLED__EMAIL__SMTP_URL", &url)])).unwrap();
        assert!(matches!(
            mailer.send(&email()).await,
            Err(MailError::Transient(_))
        ));
    }
}
