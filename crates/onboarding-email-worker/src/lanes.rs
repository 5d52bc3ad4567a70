//! One lane per user: a user's records are handled one after another, in offset order, while
//! the records of other users run beside them, up to a cap (docs/adr/0022).
//!
//! A record's lane is its Kafka key (the user id; a record without a key gets its partition's
//! lane). The offsets of a partition finish out of order, so each partition keeps the offsets
//! received and not yet finished; what is reported is the partition's watermark: the offset
//! below the lowest unfinished one (or the last received, when none is unfinished).
//!
//! Invariants:
//! - Order per user: a record starts only after the record before it in its lane finished. Two
//!   users' records never wait for each other, whatever their partition.
//! - Nothing skipped: [`Handled`] names an offset such that it and every offset received before
//!   it on its partition finished, so storing it never skips a record that was not handled.
//! - Bounded: at most `cap` records are received and not yet finished ([`Lanes::has_room`]); the
//!   caller stops receiving while it is false. Idle lanes take no memory.
//! - A record the handler gives up on (it returns `false`: shutdown came while it waited for the
//!   database) stops its lane: the records queued behind it are not started, and neither its
//!   offset nor any after it on its partition is reported.
//! - After `stop` no record starts; the ones in hand finish.
//! - Never silent: a handler that panicked is reported by [`Lanes::handled`], and its offset is
//!   never reported.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// Every record up to this offset on this partition finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    pub partition: i32,
    pub offset: i64,
}

/// What a [`Handler`] returns.
pub type HandleFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Handles one record; `false` when it gave up without handling it.
pub type Handler<R> = Arc<dyn Fn(R) -> HandleFuture + Send + Sync>;

/// The lane a record waits in: its key, or its partition for a record without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    Key(Vec<u8>),
    Unkeyed(i32),
}

impl Lane {
    pub fn of(partition: i32, key: Option<&[u8]>) -> Self {
        key.map_or(Self::Unkeyed(partition), |k| Self::Key(k.to_vec()))
    }
}

struct Record<R> {
    partition: i32,
    offset: i64,
    record: R,
}

/// A partition's progress.
#[derive(Default)]
struct Progress {
    /// Received and not yet finished.
    unfinished: BTreeSet<i64>,
    /// The first and the last offset received.
    first: Option<i64>,
    last: Option<i64>,
    /// The last watermark reported.
    reported: Option<i64>,
    /// A record here was given up or its handler failed: nothing after it is reported.
    blocked: bool,
}

impl Progress {
    /// The offset up to which every received record finished (none before the first
    /// received one finished).
    fn watermark(&self) -> Option<i64> {
        let mark = match self.unfinished.first() {
            Some(lowest) => lowest - 1,
            None => self.last?,
        };
        (mark >= self.first?).then_some(mark)
    }
}

pub struct Lanes<R> {
    handler: Handler<R>,
    stop: CancellationToken,
    cap: usize,
    in_flight: usize,
    /// A lane is here while one of its records runs; the records queued behind it wait here.
    lanes: HashMap<Lane, VecDeque<Record<R>>>,
    running: JoinSet<bool>,
    /// What each running task handles.
    tasks: HashMap<Id, (Lane, i32, i64)>,
    partitions: HashMap<i32, Progress>,
}

impl<R: Send + 'static> Lanes<R> {
    /// `cap` records at most in flight; after `stop` no record starts.
    pub fn new(cap: NonZeroUsize, stop: CancellationToken, handler: Handler<R>) -> Self {
        Self {
            handler,
            stop,
            cap: cap.get(),
            in_flight: 0,
            lanes: HashMap::new(),
            running: JoinSet::new(),
            tasks: HashMap::new(),
            partitions: HashMap::new(),
        }
    }

    /// Whether another record may be received.
    pub fn has_room(&self) -> bool {
        self.in_flight < self.cap
    }

    /// Records received and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Starts a record, or queues it behind the running record of its lane. Offsets must grow
    /// per partition (the order the consumer delivers them in).
    pub fn dispatch(&mut self, lane: Lane, partition: i32, offset: i64, record: R) {
        let progress = self.partitions.entry(partition).or_default();
        progress.unfinished.insert(offset);
        progress.first.get_or_insert(offset);
        progress.last = Some(offset);
        self.in_flight += 1;
        let record = Record {
            partition,
            offset,
            record,
        };
        match self.lanes.get_mut(&lane) {
            Some(queue) => queue.push_back(record),
            None => {
                self.lanes.insert(lane.clone(), VecDeque::new());
                self.start(lane, record);
            }
        }
    }

    fn start(&mut self, lane: Lane, record: Record<R>) {
        if self.stop.is_cancelled() {
            // Left, with the records behind it, for whoever reads the partition next.
            self.in_flight -= 1;
            self.stop_lane(&lane, record.partition);
            return;
        }
        let handler = self.handler.clone();
        let task = self.running.spawn(handler(record.record));
        self.tasks
            .insert(task.id(), (lane, record.partition, record.offset));
    }

    /// Drops a lane's queued records without starting them: their offsets stay unfinished, and
    /// nothing more is reported for their partition.
    fn stop_lane(&mut self, lane: &Lane, partition: i32) {
        let dropped = self.lanes.remove(lane).map_or(0, |q| q.len());
        self.in_flight -= dropped;
        self.partitions.entry(partition).or_default().blocked = true;
    }

    /// Bookkeeping after a record's task ended; the partition's new watermark if it moved.
    fn finished(&mut self, id: Id, handled: bool) -> Option<Handled> {
        let (lane, partition, offset) = self.tasks.remove(&id)?;
        self.in_flight -= 1;
        if !handled {
            // The offset stays unfinished; the lane stops.
            self.stop_lane(&lane, partition);
            return None;
        }
        let moved = self.record_finished(partition, offset);
        let next = self.lanes.get_mut(&lane).and_then(VecDeque::pop_front);
        match next {
            Some(record) => self.start(lane, record),
            None => {
                self.lanes.remove(&lane);
            }
        }
        moved
    }

    /// Marks `offset` finished; the partition's watermark if it moved.
    fn record_finished(&mut self, partition: i32, offset: i64) -> Option<Handled> {
        let progress = self.partitions.get_mut(&partition)?;
        progress.unfinished.remove(&offset);
        if progress.blocked {
            return None;
        }
        let watermark = progress.watermark()?;
        if progress.reported.is_some_and(|r| r >= watermark) {
            return None;
        }
        progress.reported = Some(watermark);
        Some(Handled {
            partition,
            offset: watermark,
        })
    }

    /// The next time a partition's watermark moves, or a handler's failure. Pending forever
    /// while nothing runs.
    pub async fn handled(&mut self) -> Result<Handled, tokio::task::JoinError> {
        loop {
            let Some(joined) = self.running.join_next_with_id().await else {
                return std::future::pending().await;
            };
            match joined {
                Ok((id, handled)) => {
                    if let Some(h) = self.finished(id, handled) {
                        return Ok(h);
                    }
                }
                Err(e) => {
                    // The record stays unfinished, so no offset at or after it is reported.
                    if let Some((lane, partition, _)) = self.tasks.remove(&e.id()) {
                        self.in_flight -= 1;
                        self.stop_lane(&lane, partition);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Waits until every record received was handled (or given up, or left after `stop`) and
    /// returns each partition's last watermark that moved. Everything starts afresh after it.
    pub async fn drain(&mut self) -> Vec<Handled> {
        let mut moved: HashMap<i32, i64> = HashMap::new();
        while let Some(joined) = self.running.join_next_with_id().await {
            match joined {
                Ok((id, handled)) => {
                    if let Some(h) = self.finished(id, handled) {
                        moved.insert(h.partition, h.offset);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "a mail handler failed; its record will be seen again");
                    if let Some((lane, partition, _)) = self.tasks.remove(&e.id()) {
                        self.in_flight -= 1;
                        self.stop_lane(&lane, partition);
                    }
                }
            }
        }
        self.lanes.clear();
        self.tasks.clear();
        self.partitions.clear();
        self.in_flight = 0;
        let mut handled: Vec<Handled> = moved
            .into_iter()
            .map(|(partition, offset)| Handled { partition, offset })
            .collect();
        handled.sort_by_key(|h| h.partition);
        handled
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

    fn user(name: &str) -> Lane {
        Lane::Key(name.as_bytes().to_vec())
    }

    fn at(partition: i32, offset: i64) -> Handled {
        Handled { partition, offset }
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

        /// Lets the tasks run until they wait again (for asserting what did not start).
        async fn settle(&self) {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test]
    async fn users_of_one_partition_run_side_by_side_and_each_keeps_its_order() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(user("ann"), 0, 10, "ann-1");
        lanes.dispatch(user("ann"), 0, 11, "ann-2");
        lanes.dispatch(user("bob"), 0, 12, "bob-1");
        // Bob's record finishes while Ann's first is still in hand; nothing before it is done,
        // so no offset is reported yet.
        held.finish("bob-1", true).await;
        held.settle().await;
        assert!(!held.started().contains(&"ann-2"), "ann-2 waits for ann-1");

        held.finish("ann-1", true).await;
        assert_eq!(lanes.handled().await.unwrap(), at(0, 10));
        held.finish("ann-2", true).await;
        // 11 and 12 are done: the watermark jumps to the last received.
        assert_eq!(lanes.handled().await.unwrap(), at(0, 12));
        let ann: Vec<_> = held
            .started()
            .into_iter()
            .filter(|n| n.starts_with("ann"))
            .collect();
        assert_eq!(ann, ["ann-1", "ann-2"]);
        assert_eq!(lanes.in_flight(), 0);
    }

    #[tokio::test]
    async fn the_watermark_stays_below_the_lowest_unfinished_record() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(user("a"), 3, 1, "a");
        lanes.dispatch(user("b"), 3, 2, "b");
        lanes.dispatch(user("c"), 3, 3, "c");
        held.finish("a", true).await;
        assert_eq!(lanes.handled().await.unwrap(), at(3, 1));
        held.finish("c", true).await;
        held.settle().await;
        held.finish("b", true).await;
        assert_eq!(lanes.handled().await.unwrap(), at(3, 3));
    }

    #[tokio::test]
    async fn no_room_once_the_cap_is_reached_until_a_record_is_handled() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(2), CancellationToken::new(), handler);
        assert!(lanes.has_room());
        lanes.dispatch(user("a"), 0, 1, "a");
        lanes.dispatch(user("b"), 1, 1, "b");
        assert!(!lanes.has_room());
        held.finish("b", true).await;
        lanes.handled().await.unwrap();
        assert!(lanes.has_room());
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_reported_and_its_offset_never_is() {
        let handler: Handler<&'static str> = Arc::new(|name| -> HandleFuture {
            Box::pin(async move {
                if name == "boom" {
                    panic!("a bug in a handler")
                }
                true
            })
        });
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(user("a"), 0, 1, "boom");
        let failed = lanes.handled().await.unwrap_err();
        assert!(failed.is_panic());
        lanes.dispatch(user("b"), 0, 2, "fine");
        assert!(lanes.drain().await.is_empty());
    }

    #[tokio::test]
    async fn a_record_given_up_stops_its_lane_and_nothing_after_it_is_reported() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(user("ann"), 0, 1, "first");
        lanes.dispatch(user("ann"), 0, 2, "behind");
        lanes.dispatch(user("bob"), 0, 3, "same partition");
        lanes.dispatch(user("cid"), 1, 7, "other");
        held.finish("first", false).await;
        held.finish("same partition", true).await;
        held.finish("other", true).await;
        let handled = lanes.drain().await;
        assert_eq!(handled, [at(1, 7)]);
        assert!(
            !held.started().contains(&"behind"),
            "`behind` never started"
        );
        assert_eq!(lanes.in_flight(), 0);
    }

    #[tokio::test]
    async fn after_stop_the_records_in_hand_finish_and_no_other_starts() {
        let (held, handler) = held();
        let stop = CancellationToken::new();
        let mut lanes = Lanes::new(cap(8), stop.clone(), handler);
        lanes.dispatch(user("ann"), 0, 1, "in hand");
        lanes.dispatch(user("ann"), 0, 2, "queued");
        held.wait_started("in hand").await;
        stop.cancel();
        held.finish("in hand", true).await;
        let handled = lanes.drain().await;
        assert_eq!(handled, [at(0, 1)]);
        assert_eq!(held.started(), ["in hand"]);
    }

    #[tokio::test]
    async fn drain_waits_for_every_record_and_reports_each_partitions_watermark() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(user("ann"), 3, 1, "a");
        lanes.dispatch(user("ann"), 3, 2, "b");
        lanes.dispatch(Lane::of(4, None), 4, 9, "unkeyed");
        let releaser = async {
            held.finish("a", true).await;
            held.finish("b", true).await;
            held.finish("unkeyed", true).await;
        };
        let (handled, ()) = tokio::join!(lanes.drain(), releaser);
        assert_eq!(handled, [at(3, 2), at(4, 9)]);
        // Everything starts afresh after a drain.
        lanes.dispatch(user("ann"), 3, 3, "c");
        held.finish("c", true).await;
        assert_eq!(lanes.handled().await.unwrap(), at(3, 3));
    }
}
