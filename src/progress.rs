//! Progress of long operator commands (migrations, bulk replays, waiting for a catch-up): a bar on
//! a terminal, and otherwise a log line now and then (target `settled::progress`, which operator
//! commands log at info), so a command run from a script or a unit still says how far it got.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    what: &'static str,
    bar: Option<ProgressBar>,
    total: Option<u64>,
    done: u64,
    every: Duration,
    last_line: Option<Instant>,
    started: Instant,
}

impl Progress {
    /// Progress over `total` items (None: unknown, a spinner). Without a terminal on stderr a
    /// line is logged at most once per `every` (zero: for every step).
    pub fn new(what: &'static str, total: Option<u64>, every: Duration) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{prefix} [{bar:32}] {pos}/{len} {elapsed} {wide_msg}"
            } else {
                "{prefix} {spinner} {elapsed} {wide_msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            what,
            bar,
            total,
            done: 0,
            every,
            last_line: None,
            started: Instant::now(),
        }
    }

    /// One more item done; `note` says which.
    pub fn inc(&mut self, note: &str) {
        self.set(self.done + 1, note);
    }

    /// `done` items done so far; `note` says what is happening.
    pub fn set(&mut self, done: u64, note: &str) {
        self.done = done;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(note.to_string());
            return;
        }
        let due = self.last_line.is_none_or(|at| at.elapsed() >= self.every);
        if due {
            self.last_line = Some(Instant::now());
            self.log(note);
        }
    }

    /// A total learnt along the way (more work became due while waiting).
    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    fn log(&self, note: &str) {
        let elapsed_s = self.started.elapsed().as_secs();
        match self.total {
            Some(total) => tracing::info!(
                target: "settled::progress",
                task = self.what,
                done = self.done,
                total,
                elapsed_s,
                "{note}"
            ),
            None => tracing::info!(
                target: "settled::progress",
                task = self.what,
                done = self.done,
                elapsed_s,
                "{note}"
            ),
        }
    }

    /// The end: the bar is cleared, and a final line is always logged without a terminal.
    pub fn finish(self, note: &str) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.log(note),
        }
    }
}
