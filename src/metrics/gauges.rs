//! The gauges `/metrics` shows beside the counters: what is read from the database (work
//! pending and set aside, the job queue, the outbox, whether the database answers), kept for
//! [`GAUGE_REFRESH`] so frequent scrapes do not query it each time; the pools; the process
//! itself (from /proc); and which build runs.

use std::time::{Duration, Instant};

use settled_jobs::job::WorkKind;

use super::{JOB_KINDS, install, row_kind_label};
use crate::store::Db;
use crate::store::queue::KindStats;

/// How long what was read from the database is shown before it is read again.
pub const GAUGE_REFRESH: Duration = Duration::from_secs(5);

/// What one refresh read from the database (None where the read failed).
#[derive(Debug, Clone, Default)]
pub struct DbGauges {
    pending: Vec<(WorkKind, i64)>,
    set_aside: Option<Vec<(String, i64, i64)>>,
    queue: Option<Vec<KindStats>>,
    outbox_pending: Option<i64>,
    read_at_secs: f64,
}

/// The last [`DbGauges`] read, with when (one per daemon: several may share a process).
#[derive(Default)]
pub struct GaugeCache(tokio::sync::Mutex<Option<(Instant, DbGauges)>>);

/// What `settled_build_info` says beside the version.
pub struct BuildInfo {
    pub backend: &'static str,
    pub role: &'static str,
}

fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

impl DbGauges {
    /// Reads everything at once, each query bounded by 2 s.
    pub async fn read(db: &Db, pending: Vec<(WorkKind, i64)>) -> DbGauges {
        let bound = Duration::from_secs(2);
        let set_aside = tokio::time::timeout(bound, crate::store::work_failures::summary(db))
            .await
            .ok()
            .and_then(Result::ok);
        let queue = tokio::time::timeout(bound, crate::store::queue::stats(db))
            .await
            .ok()
            .and_then(Result::ok);
        let outbox_pending = tokio::time::timeout(bound, crate::store::emails::pending_count(db))
            .await
            .ok()
            .and_then(Result::ok);
        if queue.is_none() {
            tracing::debug!("cannot read the job queue for /metrics");
        }
        DbGauges {
            pending,
            set_aside,
            queue,
            outbox_pending,
            read_at_secs: unix_now().as_secs_f64(),
        }
    }

    fn apply(&self) {
        if let Some(set_aside) = &self.set_aside {
            work_gauges(&self.pending, set_aside);
        }
        if let Some(rows) = &self.queue {
            queue_gauges(rows);
        }
        if let Some(n) = self.outbox_pending {
            metrics::gauge!("settled_outbox_pending").set(n as f64);
        }
        let up = self.queue.is_some();
        metrics::gauge!("settled_database_up").set(if up { 1.0 } else { 0.0 });
        metrics::gauge!("settled_metrics_refreshed_timestamp_seconds")
            .set(self.read_at_secs.floor());
    }
}

/// Everything `GET /metrics` shows: the counters, the gauges read from the database (again
/// only when the last read is older than [`GAUGE_REFRESH`]), the pools, the process and the
/// build. None when another recorder owns the process.
pub async fn scrape<F, Fut>(
    cache: &GaugeCache,
    pools: &[(&'static str, Db)],
    since_last_sweep: Option<Duration>,
    info: BuildInfo,
    read: F,
) -> Option<String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = DbGauges>,
{
    let handle = install()?;
    {
        let mut cached = cache.0.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < GAUGE_REFRESH);
        if !fresh {
            *cached = Some((Instant::now(), read().await));
        }
        if let Some((_, gauges)) = cached.as_ref() {
            gauges.apply();
        }
    }
    pool_gauges(pools);
    process_gauges();
    metrics::gauge!(
        "settled_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "backend" => info.backend,
        "role" => info.role
    )
    .set(1.0);
    metrics::gauge!("settled_seconds_since_last_sweep")
        .set(since_last_sweep.map_or(-1.0, |d| d.as_secs_f64().floor()));
    handle.run_upkeep();
    Some(handle.render())
}

/// The process' own figures, read from /proc (Linux); a figure that cannot be read is left out.
fn process_gauges() {
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if let Some(resident) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
    {
        metrics::gauge!("process_resident_memory_bytes").set(resident * page);
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, after_name)) = stat.rsplit_once(')')
    {
        // Fields after the command name: state is field 3, utime 14, stime 15, starttime 22.
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            metrics::gauge!("process_cpu_seconds_total").set((user + system) / ticks);
        }
    }
    // /proc/stat (the boot time) is hidden under the unit's ProcSubset=pid: the start is the
    // moment the metrics were first installed, at start-up.
    metrics::gauge!("process_start_time_seconds").set(super::started_at().floor());
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(dir.count() as f64);
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        metrics::gauge!("process_max_fds").set(limit.rlim_cur as f64);
    }
}

fn pool_gauges(pools: &[(&'static str, Db)]) {
    for (name, db) in pools {
        let name = *name;
        let (size, idle, max) = match db {
            Db::Sqlite(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
            Db::Postgres(p) => (p.size(), p.num_idle(), p.options().get_max_connections()),
        };
        let idle = idle as u32;
        metrics::gauge!("settled_db_pool_connections", "pool" => name, "state" => "idle")
            .set(f64::from(idle));
        metrics::gauge!("settled_db_pool_connections", "pool" => name, "state" => "in_use")
            .set(f64::from(size.saturating_sub(idle)));
        metrics::gauge!("settled_db_pool_max_connections", "pool" => name).set(f64::from(max));
    }
}

/// Sets queue depth, the oldest due job's age and failed jobs per kind. Every known kind is set
/// on each scrape (0 when absent), so a drained queue does not leave stale values behind.
fn queue_gauges(rows: &[KindStats]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // Every known kind, plus any other kind the rows hold (a newer daemon's on the same database).
    let mut kinds: Vec<&str> = JOB_KINDS.to_vec();
    for r in rows {
        let label = row_kind_label(&r.kind);
        if !kinds.contains(&label) {
            kinds.push(label);
        }
    }
    for kind in kinds {
        let mut depth = 0;
        let mut failed = 0;
        let mut oldest: Option<i64> = None;
        for r in rows.iter().filter(|r| row_kind_label(&r.kind) == kind) {
            depth += r.depth;
            failed += r.failed;
            oldest = match (oldest, r.oldest_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let age = oldest.map(|t| (now - t).max(0)).unwrap_or(0);
        let kind = kind.to_string();
        metrics::gauge!("settled_job_queue_depth", "kind" => kind.clone()).set(depth as f64);
        metrics::gauge!("settled_jobs_failed", "kind" => kind.clone()).set(failed as f64);
        metrics::gauge!("settled_job_queue_oldest_due_age_seconds", "kind" => kind).set(age as f64);
    }
}

/// The work gauges at scrape time: per kind, what is due and not done, and what is set aside
/// after a failure (with how long the longest-failing item has been failing).
fn work_gauges(pending: &[(settled_jobs::job::WorkKind, i64)], set_aside: &[(String, i64, i64)]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    for (kind, n) in pending {
        metrics::gauge!("settled_work_pending", "kind" => kind.name()).set(*n as f64);
    }
    for kind in settled_jobs::job::WorkKind::ALL {
        let (count, first) = set_aside
            .iter()
            .find(|(k, _, _)| k == kind.name())
            .map(|(_, n, first)| (*n, Some(*first)))
            .unwrap_or((0, None));
        metrics::gauge!("settled_work_set_aside", "kind" => kind.name()).set(count as f64);
        let age = first.map(|t| ((now - t) / 1000).max(0)).unwrap_or(0);
        metrics::gauge!("settled_work_set_aside_oldest_seconds", "kind" => kind.name())
            .set(age as f64);
    }
}
