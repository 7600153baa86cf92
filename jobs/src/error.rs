//! How a unit of work can fail: transient failures are retried with backoff, permanent ones stop
//! at once and stay visible to the operator.

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0:#}")]
    Transient(anyhow::Error),
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

impl JobError {
    pub fn permanent(message: impl std::fmt::Display) -> JobError {
        JobError::Permanent(anyhow::anyhow!("{message}"))
    }
}

impl From<crate::records::StoreError> for JobError {
    fn from(e: crate::records::StoreError) -> Self {
        match e {
            crate::records::StoreError::Unavailable(m) => JobError::Transient(anyhow::anyhow!(m)),
            crate::records::StoreError::Corrupt(m) => JobError::Permanent(anyhow::anyhow!(m)),
        }
    }
}
