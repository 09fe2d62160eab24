//! Starting a workload's clients together.

use anyhow::{bail, Result};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// Waits at `start` with the workload's client tasks (the barrier counts
/// them plus this task), failing if one of them ends before the start: a
/// client that could not set up would otherwise leave the barrier short
/// forever.
pub async fn start_together<T: 'static>(
    start: &Barrier,
    tasks: &mut JoinSet<Result<T>>,
) -> Result<()> {
    tokio::select! {
        // Biased: once the barrier opens, a fast client can finish its whole
        // run before this task is polled again, and then both branches are
        // ready. That client started; only a task that ends while the
        // barrier is still closed ended before the start.
        biased;
        _ = start.wait() => Ok(()),
        Some(ended) = tasks.join_next() => {
            ended??;
            bail!("a client ended before the start")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use anyhow::anyhow;

    use super::*;

    #[tokio::test]
    async fn a_client_that_finishes_right_after_the_start_has_started() {
        // On this single-threaded runtime the client runs only while the
        // waiter is parked at the barrier, so it is the last to arrive and
        // finishes at once: every round, both branches are ready when the
        // waiter wakes. An unbiased choice fails about half the rounds.
        for _ in 0..64 {
            let start = Arc::new(Barrier::new(2));
            let mut tasks = JoinSet::new();
            let client_start = start.clone();
            tasks.spawn(async move {
                client_start.wait().await;
                Ok(())
            });
            start_together(&start, &mut tasks).await.unwrap();
            assert!(tasks.join_next().await.unwrap().unwrap().is_ok());
        }
    }

    #[tokio::test]
    async fn a_client_that_fails_to_set_up_fails_the_start_with_its_error() {
        let start = Barrier::new(2);
        let mut tasks = JoinSet::new();
        tasks.spawn(async { Err::<(), _>(anyhow!("connection refused")) });
        let error = start_together(&start, &mut tasks).await.unwrap_err();
        assert_eq!(error.to_string(), "connection refused");
    }

    #[tokio::test]
    async fn a_client_that_returns_without_starting_fails_the_start() {
        let start = Barrier::new(2);
        let mut tasks = JoinSet::new();
        tasks.spawn(async { Ok(()) });
        let error = start_together(&start, &mut tasks).await.unwrap_err();
        assert_eq!(error.to_string(), "a client ended before the start");
    }
}
