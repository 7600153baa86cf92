//! Which code runs a job: every job drains its kind of work. A drain job names its kind; a
//! one-job-per-item job an older daemon queued drains its item's kind, which does that item
//! along with the rest.

use settled_jobs::error::JobError;
use settled_jobs::job::Job;

use super::Runner;

pub async fn run(r: &Runner, job: &Job) -> Result<(), JobError> {
    let kind = job.work_kind();
    let taken = r.drainers.run(kind).await?;
    if taken > 0 {
        tracing::debug!(kind = kind.name(), taken, "drain done");
    }
    Ok(())
}
