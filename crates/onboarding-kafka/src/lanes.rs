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
    /// The partition.
    pub partition: i32,
    /// The offset of the record, which is the offset to store (the consumer stores the next
    /// one to read, this plus one, as rdkafka's `store_offset` does).
    pub offset: i64,
}

/// What a [`Handler`] returns.
pub type HandleFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Handles one record; `false` when it gave up without handling it.
pub type Handler<R> = Arc<dyn Fn(R) -> HandleFuture + Send + Sync>;

/// The lane a record waits in: its key, or its partition for a record without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The records with this key.
    Key(Vec<u8>),
    /// The records of this partition without a key.
    Unkeyed(i32),
}

impl Lane {
    /// The lane of a record: its key's, or its partition's when it has none.
    pub fn of(partition: i32, key: Option<&[u8]>) -> Self {
        key.map_or(Self::Unkeyed(partition), |k| Self::Key(k.to_vec()))
    }
}

/// A record received and not yet started, finished or dropped.
struct Entry<R> {
    partition: i32,
    offset: i64,
    /// The lanes it waits in (no lane twice).
    lanes: Vec<Lane>,
    /// Of those, the lanes where a record before it is still in hand.
    behind: usize,
    /// Taken when it starts.
    record: Option<R>,
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

/// The records in hand, each in its lanes, and each partition's progress.
pub struct Lanes<R> {
    handler: Handler<R>,
    stop: CancellationToken,
    cap: usize,
    in_flight: usize,
    /// Every record in hand (running or waiting), by the order it was dispatched in.
    entries: HashMap<u64, Entry<R>>,
    next_entry: u64,
    /// A lane is here while it holds a record; its first record runs (or waits in another
    /// lane), the others wait behind it, in the order they were dispatched.
    lanes: HashMap<Lane, VecDeque<u64>>,
    running: JoinSet<bool>,
    /// Which entry each running task handles.
    tasks: HashMap<Id, u64>,
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
            entries: HashMap::new(),
            next_entry: 0,
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

    /// Starts a record, or queues it behind the record in hand of its lane. Offsets must grow
    /// per partition (the order the consumer delivers them in).
    pub fn dispatch(&mut self, lane: Lane, partition: i32, offset: i64, record: R) {
        self.dispatch_in(vec![lane], partition, offset, record);
    }

    /// As [`Lanes::dispatch`], for a record that must wait for the records before it in each of
    /// several lanes (a request that names both a user and a username): it starts once it is
    /// first in every one of them. A lane named twice counts once.
    pub fn dispatch_in(&mut self, mut lanes: Vec<Lane>, partition: i32, offset: i64, record: R) {
        let progress = self.partitions.entry(partition).or_default();
        progress.unfinished.insert(offset);
        progress.first.get_or_insert(offset);
        progress.last = Some(offset);
        self.in_flight += 1;
        let mut unique = Vec::with_capacity(lanes.len());
        for lane in lanes.drain(..) {
            if !unique.contains(&lane) {
                unique.push(lane);
            }
        }
        let id = self.next_entry;
        self.next_entry += 1;
        let mut behind = 0;
        for lane in &unique {
            let queue = self.lanes.entry(lane.clone()).or_default();
            if !queue.is_empty() {
                behind += 1;
            }
            queue.push_back(id);
        }
        self.entries.insert(
            id,
            Entry {
                partition,
                offset,
                lanes: unique,
                behind,
                record: Some(record),
            },
        );
        if behind == 0 {
            self.start(id);
        }
    }

    /// A record that needs no handling (the email worker's records of types it does not mail
    /// for): received and finished at once, in no lane, so it never waits behind its user's
    /// records nor holds a place among the records in hand. Its partition's watermark if that
    /// moved (the caller stores it, as it stores [`Lanes::handled`]'s). Offsets must grow per
    /// partition, as for [`Lanes::dispatch`].
    pub fn pass(&mut self, partition: i32, offset: i64) -> Option<Handled> {
        let progress = self.partitions.entry(partition).or_default();
        progress.first.get_or_insert(offset);
        progress.last = Some(offset);
        self.record_finished(partition, offset)
    }

    fn start(&mut self, id: u64) {
        if self.stop.is_cancelled() {
            // Left, with the records behind it, for whoever reads the partition next.
            self.drop_lanes_of(id);
            return;
        }
        let Some(record) = self.entries.get_mut(&id).and_then(|e| e.record.take()) else {
            return;
        };
        let handler = self.handler.clone();
        let task = self.running.spawn(handler(record));
        self.tasks.insert(task.id(), id);
    }

    /// Drops an entry that will not finish, and the records queued behind it in its lanes,
    /// without starting them: their offsets stay unfinished, and nothing more is reported for
    /// their partitions. A dropped record that was first in another lane lets the next one
    /// there go on.
    fn drop_lanes_of(&mut self, id: u64) {
        let Some(entry) = self.entries.get(&id) else {
            return;
        };
        let mut dropped = vec![id];
        for lane in &entry.lanes {
            for waiting in self.lanes.get(lane).into_iter().flatten() {
                if *waiting != id && !dropped.contains(waiting) {
                    dropped.push(*waiting);
                }
            }
        }
        // All of them leave `entries` first, so that none of them starts when the others leave
        // their lanes.
        let removed: Vec<(u64, Vec<Lane>)> = dropped
            .into_iter()
            .filter_map(|d| {
                let entry = self.entries.remove(&d)?;
                self.in_flight -= 1;
                self.partitions.entry(entry.partition).or_default().blocked = true;
                Some((d, entry.lanes))
            })
            .collect();
        for (d, lanes) in removed {
            self.leave_lanes(d, &lanes);
        }
    }

    /// Takes `id` out of `lanes`; each next record that became first in a lane is one lane
    /// nearer to starting, and starts when it is first in all of its lanes.
    fn leave_lanes(&mut self, id: u64, lanes: &[Lane]) {
        let mut ready = Vec::new();
        for lane in lanes {
            let Some(queue) = self.lanes.get_mut(lane) else {
                continue;
            };
            let was_first = queue.front() == Some(&id);
            queue.retain(|e| *e != id);
            match queue.front().copied() {
                None => {
                    self.lanes.remove(lane);
                }
                Some(next) if was_first => {
                    if let Some(e) = self.entries.get_mut(&next) {
                        e.behind -= 1;
                        if e.behind == 0 && e.record.is_some() {
                            ready.push(next);
                        }
                    }
                }
                Some(_) => {}
            }
        }
        for next in ready {
            self.start(next);
        }
    }

    /// Bookkeeping after a record's task ended; the partition's new watermark if it moved.
    fn finished(&mut self, task: Id, handled: bool) -> Option<Handled> {
        let id = self.tasks.remove(&task)?;
        if !handled {
            // The offset stays unfinished; its lanes stop.
            self.drop_lanes_of(id);
            return None;
        }
        let entry = self.entries.remove(&id)?;
        self.in_flight -= 1;
        let moved = self.record_finished(entry.partition, entry.offset);
        self.leave_lanes(id, &entry.lanes);
        moved
    }

    /// A task that panicked: its record stays unfinished, and its lanes stop.
    fn failed(&mut self, task: Id) {
        if let Some(id) = self.tasks.remove(&task) {
            self.drop_lanes_of(id);
        }
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
                    self.failed(e.id());
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
                    tracing::error!(error = %e, "a record's handler failed; the record will be seen again");
                    self.failed(e.id());
                }
            }
        }
        self.lanes.clear();
        self.entries.clear();
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
    async fn a_record_that_needs_nothing_passes_its_user_and_never_moves_the_watermark_past_work() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(1), CancellationToken::new(), handler);
        // Nothing in hand: the watermark moves at once.
        assert_eq!(lanes.pass(0, 4), Some(at(0, 4)));
        lanes.dispatch(user("ann"), 0, 5, "ann-1");
        assert!(!lanes.has_room());
        // Ann's next record needs nothing: it does not wait behind ann-1, takes no room, and
        // the offset stays below ann-1 until ann-1 finished.
        assert_eq!(lanes.pass(0, 6), None);
        assert_eq!(lanes.in_flight(), 1);
        held.finish("ann-1", true).await;
        assert_eq!(lanes.handled().await.unwrap(), at(0, 6));
        // Another partition's watermark is its own.
        assert_eq!(lanes.pass(1, 0), Some(at(1, 0)));
        assert!(lanes.drain().await.is_empty());
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

    #[tokio::test]
    async fn a_record_in_two_lanes_waits_for_the_records_before_it_in_both() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch(user("jane"), 0, 1, "jane by hr");
        lanes.dispatch(user("ola"), 1, 1, "ola by it");
        // Names both: waits for Jane's and Ola's records.
        lanes.dispatch_in(vec![user("jane"), user("ola")], 2, 1, "both");
        lanes.dispatch(user("max"), 2, 2, "max");
        held.wait_started("max").await;
        held.finish("jane by hr", true).await;
        assert_eq!(lanes.handled().await.unwrap(), at(0, 1));
        held.settle().await;
        assert!(
            !held.started().contains(&"both"),
            "`both` still waits for Ola's record"
        );
        held.finish("ola by it", true).await;
        assert_eq!(lanes.handled().await.unwrap(), at(1, 1));
        held.wait_started("both").await;
        held.finish("both", true).await;
        held.finish("max", true).await;
        let handled = lanes.drain().await;
        assert_eq!(handled, [at(2, 2)]);
        assert_eq!(lanes.in_flight(), 0);
    }

    #[tokio::test]
    async fn records_sharing_any_lane_run_in_the_order_they_were_dispatched() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch_in(vec![user("a"), user("b")], 0, 1, "ab");
        lanes.dispatch_in(vec![user("b"), user("c")], 0, 2, "bc");
        lanes.dispatch_in(vec![user("c"), user("a")], 0, 3, "ca");
        // A lane named twice counts once.
        lanes.dispatch_in(vec![user("d"), user("d")], 0, 4, "dd");
        held.wait_started("dd").await;
        held.settle().await;
        assert_eq!(held.started(), ["ab", "dd"], "`bc` and `ca` wait");
        let releaser = async {
            for name in ["ab", "bc", "ca", "dd"] {
                held.finish(name, true).await;
            }
        };
        let (handled, ()) = tokio::join!(lanes.drain(), releaser);
        assert_eq!(handled, [at(0, 4)]);
        let started: Vec<_> = held.started().into_iter().filter(|n| *n != "dd").collect();
        assert_eq!(started, ["ab", "bc", "ca"]);
    }

    #[tokio::test]
    async fn a_record_given_up_stops_every_lane_it_waits_in() {
        let (held, handler) = held();
        let mut lanes = Lanes::new(cap(8), CancellationToken::new(), handler);
        lanes.dispatch_in(vec![user("jane"), user("id-7")], 0, 1, "first");
        lanes.dispatch(user("id-7"), 1, 1, "same id");
        // Shares no lane with either: it runs.
        lanes.dispatch_in(vec![user("ola"), user("id-8")], 1, 2, "ola");
        held.finish("first", false).await;
        held.finish("ola", true).await;
        let handled = lanes.drain().await;
        assert!(
            !held.started().contains(&"same id"),
            "`same id` never started"
        );
        // Partition 1's first record was dropped: nothing of it is reported.
        assert!(handled.is_empty(), "{handled:?}");
        assert_eq!(lanes.in_flight(), 0);
    }
}
