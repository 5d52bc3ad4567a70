//! Keeps a consumer group moving: measures each partition's lag and notices a partition whose
//! records wait while nobody reads them. The email worker and the provisioner each run one over
//! their own group (docs/adr/0004), and so does the intake.
//!
//! A consumer group can leave a partition with unread records and no reader, without an error on
//! any side: tansu's coordinator handed a restarted worker an empty assignment while the killed
//! session expired. librdkafka cannot tell; the group's committed offsets can. An idle consumer
//! that sees a partition behind its high watermark whose committed offset has not moved for the
//! stall time rejoins the group, and the group reassigns the partitions.
//!
//! A measurement is a few blocking calls to the broker. It runs on tokio's blocking pool while
//! the consumer's loop goes on handing out records ([`Watchdog::poll`]): run on the loop, it held
//! every record the consumer had fetched for as long as the broker took to answer, about 200 ms
//! every 5 s on a topic of 300,000 records in tansu, which made the tail of an invitation's time
//! to its mail (docs/performance.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// How often lag is measured (between records or while idle).
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long one measurement may take in all (its calls to the broker share it). While it ran on
/// the consumer's loop, the loop polled nothing meanwhile, and a consumer that does not poll does
/// not learn that its broker is gone: in a 30-minute fault campaign an intake that started
/// measuring just before the broker restarted empty waited out 5-second timeouts while its
/// fetcher asked the returned broker for the lost topic, and died of librdkafka's SIGSEGV
/// (docs/adr/0042). The loop now polls on, but a consumer is not replaced while a measurement
/// holds it ([`Watchdog::settle`]), so a measurement still gives up after this long; one that
/// runs out of time fails, and the next one comes [`CHECK_EVERY`] later.
const MEASURE_WITHIN: Duration = Duration::from_millis(1000);

/// One partition as the watchdog last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition's number.
    pub partition: i32,
    /// The group's committed offset (the low watermark when nothing was committed yet).
    pub committed: i64,
    /// The offset the next record written to the partition gets.
    pub high_watermark: i64,
    /// Records not yet handled: high watermark minus this worker's position for a partition it
    /// holds, minus the group's committed offset for the others.
    pub lag: i64,
}

/// Measures one topic's partitions for one consumer group and tells which ones stall.
pub struct Watchdog {
    topic: String,
    /// The gauge the lag is published as: `onboard_consumer_lag` (the email worker),
    /// `onboard_provisioner_lag`, `onboard_intake_lag`.
    gauge: &'static str,
    stall: Duration,
    /// Per partition: the committed offset and since when it has not moved.
    since: HashMap<i32, (i64, Instant)>,
    last_check: Option<Instant>,
    /// The measurement running on the blocking pool, if one is.
    measuring: Option<tokio::task::JoinHandle<Result<Vec<PartitionLag>, KafkaError>>>,
}

impl Watchdog {
    /// A watchdog of `topic` that calls a partition stalled after `stall` without progress and
    /// publishes each partition's lag as the gauge `gauge`.
    pub fn new(topic: &str, stall: Duration, gauge: &'static str) -> Self {
        Self {
            topic: topic.to_owned(),
            gauge,
            stall,
            since: HashMap::new(),
            last_check: None,
            measuring: None,
        }
    }

    /// Whether the last measurement is older than [`CHECK_EVERY`].
    pub fn due(&self) -> bool {
        self.last_check.is_none_or(|t| t.elapsed() >= CHECK_EVERY)
    }

    /// Forgets what it saw, e.g. after rejoining: stall times start again.
    pub fn reset(&mut self) {
        self.since.clear();
    }

    /// Starts a measurement of `consumer` on tokio's blocking pool when one is due and none
    /// runs, and returns the measurement that finished since the last call, if one did. The
    /// caller's loop goes on receiving meanwhile.
    pub async fn poll<K, C>(
        &mut self,
        consumer: &Arc<K>,
    ) -> Option<Result<Vec<PartitionLag>, KafkaError>>
    where
        K: Consumer<C> + Send + Sync + 'static,
        C: ConsumerContext + 'static,
    {
        match &self.measuring {
            Some(running) if running.is_finished() => return self.settle().await,
            Some(_) => return None,
            None => {}
        }
        if self.due() {
            self.last_check = Some(Instant::now());
            let (consumer, topic, gauge) = (consumer.clone(), self.topic.clone(), self.gauge);
            self.measuring = Some(tokio::task::spawn_blocking(move || {
                measure(consumer.as_ref(), &topic, gauge)
            }));
        }
        None
    }

    /// Waits for the measurement in flight, if any, and returns it: before the consumer it
    /// measures is closed or replaced, so that no measurement holds it.
    pub async fn settle(&mut self) -> Option<Result<Vec<PartitionLag>, KafkaError>> {
        let running = self.measuring.take()?;
        match running.await {
            Ok(measured) => Some(measured),
            // The task panicked: no measurement this time.
            Err(e) => {
                tracing::warn!(error = %e, "the consumer lag measurement failed");
                None
            }
        }
    }

    /// The partitions with records waiting behind a committed offset that has not moved for the
    /// stall time, given the latest measurements.
    pub fn stalled(&mut self, lags: &[PartitionLag], now: Instant) -> Vec<i32> {
        let mut stalled = Vec::new();
        for l in lags {
            let entry = self.since.entry(l.partition).or_insert((l.committed, now));
            if entry.0 != l.committed {
                *entry = (l.committed, now);
            }
            if l.high_watermark > l.committed && now.duration_since(entry.1) >= self.stall {
                stalled.push(l.partition);
            }
        }
        stalled
    }
}

/// Measures every partition of `topic` (blocking calls to the broker, [`MEASURE_WITHIN`] at most
/// in all) and records the lag gauges `gauge`. Returns the measurements.
fn measure<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    gauge: &'static str,
) -> Result<Vec<PartitionLag>, KafkaError> {
    let deadline = Instant::now() + MEASURE_WITHIN;
    // What is left of the measurement's time, at least a millisecond.
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let metadata = consumer.fetch_metadata(Some(topic), left())?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, left())?;
    let position = consumer.position()?;
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, left())?;
        let offset_of =
            |list: &TopicPartitionList| match list.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
        let committed = offset_of(&committed).unwrap_or(low).max(low);
        let read_up_to = offset_of(&position).unwrap_or(committed).max(committed);
        let lag = (high - read_up_to).max(0);
        metrics::gauge!(gauge, "partition" => p.to_string()).set(lag as f64);
        out.push(PartitionLag {
            partition: p,
            committed,
            high_watermark: high,
            lag,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(partition: i32, committed: i64, high: i64) -> PartitionLag {
        PartitionLag {
            partition,
            committed,
            high_watermark: high,
            lag: high - committed,
        }
    }

    /// The measurement runs beside the caller: `poll` starts it and returns at once, and its
    /// result (here a failure: no broker answers) comes from a later `poll` or from `settle`.
    #[tokio::test]
    async fn a_measurement_runs_beside_the_loop_and_settle_waits_for_it() {
        let consumer: Arc<rdkafka::consumer::BaseConsumer> = Arc::new(
            rdkafka::ClientConfig::new()
                // Nothing listens on port 1.
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("group.id", "watchdog-test")
                .create()
                .unwrap(),
        );
        let mut w = Watchdog::new("t", Duration::from_secs(30), "test_lag");
        assert!(w.due());
        assert!(
            w.poll(&consumer).await.is_none(),
            "the first poll only starts one"
        );
        assert!(w.measuring.is_some());
        assert!(!w.due(), "a started measurement counts as the check");
        let measured = w.settle().await;
        assert!(
            matches!(measured, Some(Err(_))),
            "no broker, so the measurement fails: {measured:?}"
        );
        assert!(w.measuring.is_none());
        assert!(w.settle().await.is_none(), "nothing left to wait for");
        assert!(w.poll(&consumer).await.is_none());
        assert!(w.measuring.is_none(), "not due again before CHECK_EVERY");
    }

    #[test]
    fn a_partition_is_stalled_only_when_its_records_wait_and_its_offset_stands_still() {
        let mut w = Watchdog::new("t", Duration::from_secs(30), "test_lag");
        let t0 = Instant::now();
        assert!(w.stalled(&[lag(0, 5, 9), lag(1, 3, 3)], t0).is_empty());
        let t1 = t0 + Duration::from_secs(31);
        // Partition 0 waited 31 s without progress; partition 1 has nothing to read.
        assert_eq!(w.stalled(&[lag(0, 5, 9), lag(1, 3, 3)], t1), vec![0]);
        // Progress restarts the clock.
        assert!(w.stalled(&[lag(0, 6, 9)], t1).is_empty());
        assert!(w
            .stalled(&[lag(0, 6, 9)], t1 + Duration::from_secs(29))
            .is_empty());
        assert_eq!(
            w.stalled(&[lag(0, 6, 9)], t1 + Duration::from_secs(30)),
            vec![0]
        );
        w.reset();
        assert!(w
            .stalled(&[lag(0, 6, 9)], t1 + Duration::from_secs(31))
            .is_empty());
    }
}
