//! The operator's commands on stored gateway events: list, show and replay, one by one or all
//! of a status at once (waiting for them to be processed again when asked).

use std::time::{Duration, Instant};

use axum::http::Method;
use serde_json::json;

use super::admin::TIMED_OUT;
use super::commands::*;
use super::request::{Answer, Target, call, query};
use crate::progress::Progress;

pub async fn webhooks(target: &Target, cmd: WebhooksCommand) -> anyhow::Result<Answer> {
    match cmd {
        WebhooksCommand::List { status, source } => {
            let q = query(&[("status", &status), ("source", &source)]);
            call(target, Method::GET, &format!("/v1/webhook_events{q}"), None).await
        }
        WebhooksCommand::Show { id } => {
            call(
                target,
                Method::GET,
                &format!("/v1/webhook_events/{id}"),
                None,
            )
            .await
        }
        WebhooksCommand::Replay {
            id,
            status,
            source,
            wait,
            timeout,
            dry_run,
        } => match (id, status) {
            (Some(id), _) => {
                call(
                    target,
                    Method::POST,
                    &format!("/v1/webhook_events/{id}/replay"),
                    Some(json!({})),
                )
                .await
            }
            (None, Some(status)) if dry_run => {
                let mut ids = match event_ids(target, &status, &source).await? {
                    Ok(ids) => ids,
                    Err(refused) => return Ok(refused),
                };
                ids.reverse();
                Ok(Answer {
                    status: 200,
                    body: json!({
                        "object": "replay_summary",
                        "dry_run": true,
                        "status": status,
                        "selected": ids.len(),
                        "replayed": 0,
                        "ids": ids,
                    }),
                })
            }
            (None, Some(status)) => {
                replay_all(target, status, source, wait, Duration::from_secs(timeout)).await
            }
            (None, None) => anyhow::bail!("give an event id or --status"),
        },
    }
}

/// Every stored event with `status` (and `source`), following pages.
async fn event_ids(
    target: &Target,
    status: &str,
    source: &Option<String>,
) -> anyhow::Result<Result<Vec<String>, Answer>> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = query(&[
            ("status", &Some(status.to_string())),
            ("source", source),
            ("starting_after", &after),
        ]);
        let sep = if q.is_empty() { "?" } else { "&" };
        let answer = call(
            target,
            Method::GET,
            &format!("/v1/webhook_events{q}{sep}limit=1000"),
            None,
        )
        .await?;
        if answer.status != 200 {
            return Ok(Err(answer));
        }
        let page = answer.body["data"].as_array().cloned().unwrap_or_default();
        ids.extend(
            page.iter()
                .filter_map(|e| e["id"].as_str().map(String::from)),
        );
        after = ids.last().cloned();
        if answer.body["has_more"] != true || page.is_empty() {
            return Ok(Ok(ids));
        }
    }
}

/// Replays every event with `status`, oldest first, with progress; with `wait`, then waits
/// until none of them is still waiting to be processed.
async fn replay_all(
    target: &Target,
    status: String,
    source: Option<String>,
    wait: bool,
    within: Duration,
) -> anyhow::Result<Answer> {
    let mut ids = match event_ids(target, &status, &source).await? {
        Ok(ids) => ids,
        Err(refused) => return Ok(refused),
    };
    ids.reverse();
    let total = ids.len();
    let mut progress = Progress::new("replaying", Some(total as u64), Duration::from_secs(2));
    let mut refused = Vec::new();
    for id in &ids {
        let answer = call(
            target,
            Method::POST,
            &format!("/v1/webhook_events/{id}/replay"),
            Some(json!({})),
        )
        .await?;
        if answer.status != 200 {
            refused.push(json!({"id": id, "status": answer.status, "error": answer.body["error"]}));
        }
        progress.inc(id);
    }
    progress.finish(&format!(
        "{} of {total} events replayed",
        total - refused.len()
    ));
    let mut summary = json!({
        "object": "replay_summary",
        "status": status,
        "selected": total,
        "replayed": total - refused.len(),
        "refused": refused,
    });
    if wait && total > 0 {
        let deadline = Instant::now() + within;
        let mut progress = Progress::new("processing", Some(total as u64), Duration::from_secs(5));
        loop {
            let mut pending = 0u64;
            let mut outcomes: std::collections::BTreeMap<String, u64> = Default::default();
            for id in &ids {
                let event = call(
                    target,
                    Method::GET,
                    &format!("/v1/webhook_events/{id}"),
                    None,
                )
                .await?;
                let s = match (event.status, event.body["status"].as_str()) {
                    (200, Some(s)) => s.to_string(),
                    _ => "gone".into(),
                };
                if s == "received" {
                    pending += 1;
                } else {
                    *outcomes.entry(s).or_default() += 1;
                }
            }
            progress.set(total as u64 - pending, &format!("{pending} waiting"));
            if pending == 0 {
                progress.finish("every replayed event was processed");
                summary["outcomes"] = json!(outcomes);
                break;
            }
            if Instant::now() >= deadline {
                progress.finish("gave up waiting");
                return Ok(Answer {
                    status: TIMED_OUT,
                    body: json!({"error": {"code": "timeout", "message": format!(
                        "{pending} replayed events are still waiting after {} s; is a daemon with workers running on this database?",
                        within.as_secs()
                    )}}),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(Answer {
        status: 200,
        body: summary,
    })
}
