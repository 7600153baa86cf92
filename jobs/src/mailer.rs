//! What the billing core needs to send an email. The daemon implements it with SMTP or a folder of
//! .eml files; the core decides what to say and to whom, and whether a failure is worth retrying.

use async_trait::async_trait;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// One message, fully rendered. The Message-ID is derived from the outbox row, so a resend after a
/// crash is recognisably the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEmail {
    pub message_id: String,
    /// The Date header: when the event happened, so a resend carries the same one.
    pub date: Option<chrono::DateTime<chrono::Utc>>,
    pub from: String,
    /// Where replies go (the business's support contact), if anywhere but `from`.
    pub reply_to: Option<String>,
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// Try again later: the server is away, busy or answered 4xx.
    #[error("temporary mail failure: {0}")]
    Transient(String),
    /// Retrying will not help: 5xx, an address the server refuses, a message that cannot be built.
    #[error("permanent mail failure: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError>;
}
