//! I/O helpers of the sync tasks: frame reader tasks and store reads off the runtime.

use tokio::sync::mpsc;
use transport::frame::read_frame;
use transport::quinn::RecvStream;

use super::error::SyncError;

/// Queued frames between a stream's reader task and its session.
const QUEUE: usize = 8;

/// Reads frames into a bounded queue (so sessions can wait on frames and other events
/// without losing half-read frames).
pub fn reader<T>(mut recv: RecvStream, max: usize) -> mpsc::Receiver<Result<T, SyncError>>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                f = read_frame::<T, _>(&mut recv, max) => f,
                // The session ended: stop reading (the frame in progress is not needed).
                _ = tx.closed() => {
                    let _ = recv.stop(0u32.into());
                    return;
                }
            };
            let item = match frame {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err(SyncError::Closed),
                Err(e) => Err(e.into()),
            };
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                if end {
                    let _ = recv.stop(1u32.into());
                }
                return;
            }
        }
    });
    rx
}

/// The next frame from a reader.
pub async fn next<T>(rx: &mut mpsc::Receiver<Result<T, SyncError>>) -> Result<T, SyncError> {
    rx.recv().await.unwrap_or(Err(SyncError::Closed))
}

/// Runs blocking store work (reads, and the pure session steps that read a snapshot) off
/// the runtime's threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SyncError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Longest a reconciliation waits on its peer (a frame from it, or room to write to it)
/// while it holds a snapshot of the store: an open read transaction keeps the pages
/// freed after it from being used again, so a peer that stops answering would make the
/// store file grow with every later write.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// `step`, or [`SyncError::Stalled`] if it takes longer than [`STALL`].
pub async fn within<T>(
    step: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    within_for(STALL, step).await
}

async fn within_for<T>(
    limit: std::time::Duration,
    step: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or(Err(SyncError::Stalled(limit)))
}

/// Sleeps until `at`, or forever.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_that_stops_answering_ends_the_step() {
        let (tx, mut rx) = mpsc::channel::<Result<u8, SyncError>>(1);
        let limit = std::time::Duration::from_millis(50);
        // Nothing comes (the sender is kept, so the queue is not closed).
        let r = within_for(limit, next(&mut rx)).await;
        assert!(
            matches!(r, Err(SyncError::Stalled(d)) if d == limit),
            "{r:?}"
        );
        // An answer in time goes through.
        tx.send(Ok(7)).await.unwrap();
        assert_eq!(within_for(limit, next(&mut rx)).await.unwrap(), 7);
    }
}
