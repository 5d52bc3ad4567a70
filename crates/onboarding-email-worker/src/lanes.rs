//! One lane per partition: a lane's records are handled one after another, in offset order, by
//! the lane's own task, while the lanes of other partitions run beside it.
//!
//! Invariants:
//! - Order per partition: a record is handed to its lane only; a lane starts a record after the
//!   one before it was handled. So [`Handled`] arrives in offset order per partition, and
//!   storing each one's offset never skips a record that was not handled.
//! - Bounded: at most `cap` records are received and not yet handled ([`Lanes::has_room`]); the
//!   caller stops receiving while it is false.
//! - A record the handler gives up on (it returns `false`: shutdown came while it waited for the
//!   database) stops its lane: the records queued behind it are neither handled nor reported,
//!   and their offsets are not stored.
//! - After `stop` a lane finishes the record in hand and starts no other; the records queued
//!   behind it are left for whoever reads the partition next.
//! - Never silent: a lane whose task failed (a panic while handling) is reported by
//!   [`Lanes::handled`], rather than leaving its records counted in flight forever.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A record whose handling finished; everything before it on its partition finished too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    pub partition: i32,
    pub offset: i64,
}

/// What a [`Handler`] returns.
pub type HandleFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Handles one record; `false` when it gave up without handling it.
pub type Handler<R> = Arc<dyn Fn(R) -> HandleFuture + Send + Sync>;

pub struct Lanes<R> {
    handler: Handler<R>,
    stop: CancellationToken,
    cap: usize,
    in_flight: usize,
    lanes: HashMap<i32, mpsc::UnboundedSender<(i64, R)>>,
    tasks: JoinSet<()>,
    handled_tx: mpsc::UnboundedSender<Handled>,
    handled_rx: mpsc::UnboundedReceiver<Handled>,
}

impl<R: Send + 'static> Lanes<R> {
    /// `cap` records at most in flight; after `stop` no lane starts a record.
    pub fn new(cap: NonZeroUsize, stop: CancellationToken, handler: Handler<R>) -> Self {
        let (handled_tx, handled_rx) = mpsc::unbounded_channel();
        Self {
            handler,
            stop,
            cap: cap.get(),
            in_flight: 0,
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
            handled_tx,
            handled_rx,
        }
    }

    /// Whether another record may be received.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.cap
    }

    /// Records received and not yet handled.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a record on its partition's lane (starting the lane on its first record).
    pub fn dispatch(&mut self, partition: i32, offset: i64, record: R) {
        let lane = self.lanes.entry(partition).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.tasks.spawn(run_lane(
                partition,
                rx,
                self.handler.clone(),
                self.stop.clone(),
                self.handled_tx.clone(),
            ));
            tx
        });
        if lane.send((offset, record)).is_err() {
            // The lane stopped (its handler gave up at shutdown): the record is left unhandled,
            // like the ones queued behind the record it gave up on.
            tracing::debug!(
                partition,
                offset,
                "lane stopped; record left for redelivery"
            );
            return;
        }
        self.in_flight += 1;
    }

    /// The next handled record, or the failure of a lane. Pending forever while nothing is in
    /// flight.
    pub async fn handled(&mut self) -> Result<Handled, tokio::task::JoinError> {
        if self.in_flight == 0 {
            return std::future::pending().await;
        }
        loop {
            tokio::select! {
                // The sender in `self` keeps the channel open, so `recv` never yields `None`.
                handled = self.handled_rx.recv() => {
                    self.in_flight -= 1;
                    return Ok(handled.expect("Lanes holds a sender"));
                }
                Some(joined) = self.tasks.join_next() => {
                    // A lane ends on its own only when its handler gave up at shutdown.
                    joined?;
                }
            }
        }
    }

    /// Closes every lane and waits until each has finished the records it holds (or gave up);
    /// returns what was handled, in order per partition. Lanes start afresh on the next
    /// [`Lanes::dispatch`].
    pub async fn drain(&mut self) -> Vec<Handled> {
        self.lanes.clear();
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined {
                tracing::error!(error = %e, "a partition lane failed; its records will be seen again");
            }
        }
        let mut handled = Vec::new();
        while let Ok(h) = self.handled_rx.try_recv() {
            handled.push(h);
        }
        self.in_flight = 0;
        handled
    }
}

async fn run_lane<R>(
    partition: i32,
    mut records: mpsc::UnboundedReceiver<(i64, R)>,
    handler: Handler<R>,
    stop: CancellationToken,
    handled: mpsc::UnboundedSender<Handled>,
) {
    while let Some((offset, record)) = records.recv().await {
        if stop.is_cancelled() || !handler(record).await {
            return;
        }
        let _ = handled.send(Handled { partition, offset });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    fn cap(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("a test's cap is positive")
    }

    /// A handler that logs each record when it starts and waits for the test to release it.
    struct Held {
        started: Arc<Mutex<Vec<&'static str>>>,
        releases: Arc<Mutex<HashMap<&'static str, oneshot::Sender<bool>>>>,
    }

    fn held() -> (Held, Handler<&'static str>) {
        let held = Held {
            started: Arc::default(),
            releases: Arc::default(),
        };
        let (started, releases) = (held.started.clone(), held.releases.clone());
        let handler: Handler<&'static str> = Arc::new(move |name| -> HandleFuture {
            let (tx, rx) = oneshot::channel();
            started.lock().unwrap().push(name);
            releases.lock().unwrap().insert(name, tx);
            Box::pin(async move { rx.await.unwrap_or(false) })
        });
        (held, handler)
    }

    impl Held {
        fn started(&self) -> Vec<&'static str> {
            self.started.lock().unwrap().clone()
        }

        /// Waits until `name` started, then lets it finish (`handled`) or give up.
        async fn finish(&self, name: &str, handled: bool) {
            loop {
                let release = self.releases.lock().unwrap().remove(name);
                if let Some(tx) = release {
                    tx.send(handled).unwrap();
                    return;
                }
                tokio::task::yield_now().await;
            }
        }

        async fn wait_started(&self, name: &str) {
            while !self.started().contains(&name) {
                tokio::task::yield_now().await;
            }
        }

        /// Lets the lanes' tasks run until they wait again (for asserting what did not start).
        async fn settle(&self) {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test]
    async fn partitions_run_side_by_side_and_each_keeps_its_order() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(0, 10, "p0-a");
        lanes.dispatch(0, 11, "p0-b");
        lanes.dispatch(1, 5, "p1-a");
        // p1's record finishes while p0's first record is still in hand.
        held.finish("p1-a", true).await;
        assert_eq!(
            lanes.handled().await.unwrap(),
            Handled {
                partition: 1,
                offset: 5
            }
        );
        held.settle().await;
        assert!(!held.started().contains(&"p0-b"), "p0-b waits for p0-a");

        held.finish("p0-a", true).await;
        assert_eq!(lanes.handled().await.unwrap().offset, 10);
        held.finish("p0-b", true).await;
        assert_eq!(lanes.handled().await.unwrap().offset, 11);
        let p0: Vec<_> = held
            .started()
            .into_iter()
            .filter(|n| n.starts_with("p0"))
            .collect();
        assert_eq!(p0, ["p0-a", "p0-b"]);
        assert_eq!(lanes.in_flight(), 0);
    }

    #[tokio::test]
    async fn no_room_once_the_cap_is_reached_until_a_record_is_handled() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(2), CancellationToken::new(), handler);
        assert!(lanes.has_room());
        lanes.dispatch(0, 1, "a");
        lanes.dispatch(1, 1, "b");
        assert!(!lanes.has_room());
        held.finish("b", true).await;
        lanes.handled().await.unwrap();
        assert!(lanes.has_room());
    }

    #[tokio::test]
    async fn a_lane_that_panics_is_reported_not_left_in_flight() {
        let handler: Handler<&'static str> =
            Arc::new(|_| -> HandleFuture { Box::pin(async { panic!("a bug in a handler") }) });
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(0, 1, "boom");
        let failed = lanes.handled().await.unwrap_err();
        assert!(failed.is_panic());
    }

    #[tokio::test]
    async fn a_cap_of_one_handles_one_record_at_a_time() {
        let (_held, handler) = held();
        let mut lanes = Lanes::new(cap(1), CancellationToken::new(), handler);
        lanes.dispatch(0, 1, "a");
        assert!(!lanes.has_room());
    }

    #[tokio::test]
    async fn a_record_given_up_stops_its_lane_and_nothing_behind_it_is_reported() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(0, 1, "first");
        lanes.dispatch(0, 2, "behind");
        lanes.dispatch(1, 7, "other");
        held.finish("first", false).await;
        held.finish("other", true).await;
        let handled = lanes.drain().await;
        assert_eq!(
            handled,
            [Handled {
                partition: 1,
                offset: 7
            }]
        );
        assert!(
            !held.started().contains(&"behind"),
            "`behind` never started"
        );
        assert_eq!(lanes.in_flight(), 0);
    }

    #[tokio::test]
    async fn after_stop_each_lane_finishes_the_record_in_hand_and_starts_no_other() {
        let (held, handler) = held();
        let stop = CancellationToken::new();
        let mut lanes = Lanes::new(cap(8), stop.clone(), handler);
        lanes.dispatch(0, 1, "in hand");
        lanes.dispatch(0, 2, "queued");
        held.wait_started("in hand").await;
        stop.cancel();
        held.finish("in hand", true).await;
        let handled = lanes.drain().await;
        assert_eq!(
            handled,
            [Handled {
                partition: 0,
                offset: 1
            }]
        );
        assert_eq!(held.started(), ["in hand"]);
    }

    #[tokio::test]
    async fn drain_waits_for_every_record_in_hand_and_reports_them_in_order() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(3, 1, "a");
        lanes.dispatch(3, 2, "b");
        let releaser = async {
            held.finish("a", true).await;
            held.finish("b", true).await;
        };
        let (handled, ()) = tokio::join!(lanes.drain(), releaser);
        let offsets: Vec<i64> = handled.iter().map(|h| h.offset).collect();
        assert_eq!(offsets, [1, 2]);
        // A lane starts afresh after a drain.
        lanes.dispatch(3, 3, "c");
        held.finish("c", true).await;
        assert_eq!(lanes.handled().await.unwrap().offset, 3);
    }
}
