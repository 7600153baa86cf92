//! The one error the money workflows return. Storage failures keep their cause; the rest say
//! what rule refused or what must wait, so the HTTP layer can answer 409 or 422 and the runner
//! can tell a retry from a dead end.

use settled_jobs::error::JobError;
use settled_jobs::gateway::GatewayError;

use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed or is busy: try again later.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The request conflicts with the records' state (voiding a paid invoice, a charge in
    /// flight): 409 with this code.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The request names something invalid: 422, naming the field.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// What the request names does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// The gateway refused or failed a call the request made.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// Retrying will not help (a stored record the rules cannot read).
    #[error("{0}")]
    Permanent(String),
    /// Not yet: try again later (no gateway configured yet, a period that has not started by
    /// this daemon's clock, an outcome still unknown).
    #[error("{0}")]
    Later(String),
    /// An event about a payment that is not recorded yet (a refund overtaking its payment): it
    /// waits, and runs again the moment that payment is recorded.
    #[error("the payment of {0} is not recorded yet")]
    WaitingFor(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Error {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Error {
        Error::Invalid {
            field: field.to_string(),
            message: message.to_string(),
        }
    }

    pub fn not_found(what: &str, id: &str) -> Error {
        Error::NotFound(format!("no {what} with id {id}"))
    }

    pub fn permanent(message: impl std::fmt::Display) -> Error {
        Error::Permanent(message.to_string())
    }

    pub fn later(message: impl std::fmt::Display) -> Error {
        Error::Later(message.to_string())
    }
}

impl From<JobError> for Error {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Transient(e) => Error::Later(format!("{e:#}")),
            JobError::Permanent(e) => Error::Permanent(format!("{e:#}")),
        }
    }
}

impl From<settled_jobs::records::StoreError> for Error {
    fn from(e: settled_jobs::records::StoreError) -> Self {
        JobError::from(e).into()
    }
}

/// How the runner sees a workflow's failure: storage trouble and "not yet" are retried with
/// backoff; a refusal or an unreadable record is not.
impl From<Error> for JobError {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(e) => JobError::Transient(anyhow::Error::new(e).context("database error")),
            Error::Later(m) => JobError::Transient(anyhow::anyhow!(m)),
            Error::WaitingFor(pi) => {
                JobError::Transient(anyhow::anyhow!("the payment of {pi} is not recorded yet"))
            }
            Error::Gateway(GatewayError::Unknown(m)) => JobError::Transient(anyhow::anyhow!(m)),
            other => JobError::Permanent(anyhow::anyhow!("{other}")),
        }
    }
}
