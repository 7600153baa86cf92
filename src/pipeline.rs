//! The shape every drain that waits on the outside world takes (gateway calls, SMTP sends):
//! items are claimed from their table a batch at a time while earlier ones are still out, the
//! slow step runs for a bounded number at once with no transaction open, and results are
//! recorded as they come back, a chunk per transaction. The outside world's latency then sets
//! the pace, not the database round trips around each item; and every item taken is recorded
//! (or left to its lease) before the pass ends.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// How wide the pipeline runs.
#[derive(Debug, Clone, Copy)]
pub struct Widths {
    /// The most items one claim takes; also how many claimed items may wait for a free slot, so
    /// an item's lease starts only shortly before its slow step does.
    pub batch: usize,
    /// Slow steps (calls, sends) under way at once.
    pub in_flight: usize,
    /// The most results one record transaction takes (it takes whatever finished meanwhile).
    pub record_chunk: usize,
    /// Record transactions under way at once (more than one only where the database runs
    /// writers side by side).
    pub records_at_once: usize,
}

/// Runs the pipeline until `claim` finds nothing, or `stop` is cancelled; then the items already
/// taken are finished and recorded. `claim(most)` returns the items to work on and how many more
/// it settled without work (decided on the spot); `work` is the slow step; `record` writes a
/// chunk of results. Returns how many items were claimed or settled. A claim's error stops
/// claiming; a record's error is returned once every result in hand has been offered to
/// `record`.
pub async fn run<T, R, E, C, CF, W, WF, Rec, RF>(
    stop: &CancellationToken,
    widths: Widths,
    mut claim: C,
    work: W,
    record: Rec,
) -> Result<usize, E>
where
    C: FnMut(usize) -> CF,
    CF: Future<Output = Result<(Vec<T>, usize), E>>,
    W: Fn(T) -> WF,
    WF: Future<Output = R>,
    Rec: Fn(Vec<R>) -> RF,
    RF: Future<Output = Result<(), E>>,
{
    let batch = widths.batch.max(1);
    let (queue, mut waiting) = tokio::sync::mpsc::channel::<T>(batch);
    let handled = AtomicUsize::new(0);
    let claiming = async {
        let queue = queue;
        while !stop.is_cancelled() {
            // Room for half a batch at least before claiming, so claims are not one by one.
            let room = queue.capacity();
            if room < batch.div_ceil(2) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let (items, settled) = claim(room).await?;
            handled.fetch_add(items.len() + settled, Ordering::Relaxed);
            if items.is_empty() && settled == 0 {
                break;
            }
            for item in items {
                if queue.send(item).await.is_err() {
                    break;
                }
            }
        }
        Ok(())
    };
    let recording = futures::stream::poll_fn(|cx| waiting.poll_recv(cx))
        .map(&work)
        .buffer_unordered(widths.in_flight.max(1))
        .ready_chunks(widths.record_chunk.max(1))
        .map(&record)
        .buffer_unordered(widths.records_at_once.max(1))
        .collect::<Vec<Result<(), E>>>();
    let (claimed, recorded) = futures::join!(claiming, recording);
    recorded.into_iter().collect::<Result<Vec<()>, E>>()?;
    claimed?;
    Ok(handled.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn every_claimed_item_is_worked_and_recorded_once() {
        let source = Mutex::new((0..1000).collect::<Vec<u32>>());
        let recorded = Mutex::new(Vec::new());
        let in_flight = AtomicUsize::new(0);
        let most_in_flight = AtomicUsize::new(0);
        let widths = Widths {
            batch: 64,
            in_flight: 16,
            record_chunk: 10,
            records_at_once: 2,
        };
        let n = run(
            &CancellationToken::new(),
            widths,
            |most| {
                let mut s = source.lock().unwrap();
                let take = most.min(s.len());
                let items: Vec<u32> = s.drain(..take).collect();
                async move { Ok::<_, String>((items, 0)) }
            },
            |item| {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most_in_flight.fetch_max(now, Ordering::SeqCst);
                let in_flight = &in_flight;
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    item * 2
                }
            },
            |chunk| {
                assert!(chunk.len() <= 10);
                recorded.lock().unwrap().extend(chunk);
                async { Ok(()) }
            },
        )
        .await
        .unwrap();
        assert_eq!(n, 1000);
        let mut got = recorded.into_inner().unwrap();
        got.sort();
        assert_eq!(got, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
        assert!(most_in_flight.load(Ordering::SeqCst) <= 16);
    }

    #[tokio::test]
    async fn a_record_error_is_returned_after_every_result_was_offered() {
        let source = Mutex::new((0..100).collect::<Vec<u32>>());
        let offered = AtomicUsize::new(0);
        let widths = Widths {
            batch: 10,
            in_flight: 4,
            record_chunk: 5,
            records_at_once: 1,
        };
        let result = run(
            &CancellationToken::new(),
            widths,
            |most| {
                let mut s = source.lock().unwrap();
                let take = most.min(s.len());
                let items: Vec<u32> = s.drain(..take).collect();
                async move { Ok::<_, String>((items, 0)) }
            },
            |item| async move { item },
            |chunk| {
                offered.fetch_add(chunk.len(), Ordering::SeqCst);
                async move {
                    if chunk.contains(&7) {
                        Err("the database went away".to_string())
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await;
        assert_eq!(result, Err("the database went away".to_string()));
        assert_eq!(offered.load(Ordering::SeqCst), 100);
    }

    #[tokio::test]
    async fn a_cancelled_pass_claims_nothing_more() {
        let stop = CancellationToken::new();
        stop.cancel();
        let claims = AtomicUsize::new(0);
        let n = run(
            &stop,
            Widths {
                batch: 10,
                in_flight: 4,
                record_chunk: 5,
                records_at_once: 1,
            },
            |_| {
                claims.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, String>((vec![1u32], 0)) }
            },
            |item| async move { item },
            |_| async { Ok(()) },
        )
        .await
        .unwrap();
        assert_eq!((n, claims.load(Ordering::SeqCst)), (0, 0));
    }
}
