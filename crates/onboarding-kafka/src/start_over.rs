//! Starting a topic's partitions over after the broker lost the topic (docs/adr/0037).
//!
//! A broker that lost its data (an in-memory broker that restarted, a topic deleted by hand)
//! comes back with a topic whose offsets start again at 0, while a consumer that lived through it
//! still holds the offsets of the lost topic: in memory, and committed into the new broker's group
//! when its partitions are revoked. Read from those offsets, the new topic's records below them
//! would never be read. The relay counts each recreation of the event topic in PostgreSQL (a
//! generation); a consumer that sees the generation move builds a new consumer, and each partition
//! assigned to it that its group has not started over in this generation yet starts from the
//! beginning. Re-reading is safe: every consumer of the engine is idempotent.
//!
//! [`StartOver`] keeps what the consumer knows (the generation, and per partition the generation
//! its group last started it over in) and decides at each assignment; [`GroupContext`] is the
//! consumer context that applies it. The consumer reads and records the generations in
//! PostgreSQL itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::resume::Rewind;

/// What a consumer knows about its topic's generations.
#[derive(Debug, Default)]
pub struct StartOver {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The topic's generation as last read from PostgreSQL (0: never lost).
    generation: i64,
    /// Per partition, the generation in which the group last started it over.
    started: HashMap<i32, i64>,
    /// Partitions started over at an assignment and not yet recorded in PostgreSQL.
    unrecorded: Vec<(i32, i64)>,
}

impl StartOver {
    /// Nothing known yet: generation 0, no partition started over.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere does not spoil it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The generation the consumer knows.
    pub fn generation(&self) -> i64 {
        self.state().generation
    }

    /// Learns the topic's `generation` and, per partition, the generation the group last started
    /// it over in (both read from PostgreSQL). Partitions assigned from now on that were last
    /// started over in an older generation start from the beginning.
    pub fn learn(&self, generation: i64, started: impl IntoIterator<Item = (i32, i64)>) {
        let mut state = self.state();
        state.generation = state.generation.max(generation);
        for (partition, g) in started {
            let entry = state.started.entry(partition).or_insert(g);
            *entry = (*entry).max(g);
        }
    }

    /// At an assignment: sets the partitions to start over to the beginning of the topic and
    /// returns them.
    pub fn on_assign(&self, tpl: &mut TopicPartitionList) -> Vec<i32> {
        let mut state = self.state();
        let generation = state.generation;
        if generation == 0 {
            return Vec::new();
        }
        let mut rewound = Vec::new();
        for (topic, partition) in tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect::<Vec<_>>()
        {
            if state.started.get(&partition).copied().unwrap_or(0) >= generation {
                continue;
            }
            if tpl
                .set_partition_offset(&topic, partition, Offset::Beginning)
                .is_ok()
            {
                state.started.insert(partition, generation);
                state.unrecorded.push((partition, generation));
                rewound.push(partition);
            }
        }
        rewound
    }

    /// The partitions started over since the last call, each with the generation it was started
    /// over in, for the consumer to record in PostgreSQL.
    pub fn take_unrecorded(&self) -> Vec<(i32, i64)> {
        std::mem::take(&mut self.state().unrecorded)
    }

    /// Gives back what [`StartOver::take_unrecorded`] returned when it could not be recorded, to
    /// be recorded next time.
    pub fn unrecorded_again(&self, started: Vec<(i32, i64)>) {
        self.state().unrecorded.extend(started);
    }
}

/// Logs what a consumer learnt of its topic's generation: at its start (`first`), only which
/// generation it is in; later, that the relay recreated the topic and the consumer is built again.
pub fn log_new_generation(first: bool, generation: i64, topic: &str) {
    if first {
        tracing::info!(generation, %topic, "the broker lost the event topic before; partitions the group has not started over since start from the beginning");
    } else {
        tracing::warn!(generation, %topic, "the relay recreated the event topic after the broker lost it; building a new consumer, whose partitions start from the beginning unless the group did so already");
        metrics::counter!("onboard_consumer_start_overs_total").increment(1);
    }
}

/// Stops a consumer from fetching once it lost every broker: on `AllBrokersDown`, pauses every
/// partition assigned to it and returns true (the caller then builds a new consumer once the
/// broker answers again, or once the relay recreated the topic). Other errors change nothing.
///
/// A broker that comes back without the topic (an in-memory broker that restarted) must not be
/// asked for it by the old consumer. tansu 0.6.0 answers a fetch for a topic it does not know
/// with a nil topic id and a leader for each partition; librdkafka 2.12.1 (rdkafka-sys
/// 4.10.0) turns that leader into a metadata update without a topic name and dies of SIGSEGV in
/// `rd_kafka_metadata_update_op` (strcmp on the missing name) within a second of reconnecting.
/// A paused partition is not fetched, and stays paused when the group assigns it again; a new
/// consumer learns the topic (and its new id) from the broker before it fetches.
///
/// Each `AllBrokersDown` pauses the assignment again (partitions assigned meanwhile included);
/// only the first is logged.
pub fn pause_on_broker_loss(consumer: &impl Consumer<GroupContext>, error: &KafkaError) -> bool {
    if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
        return false;
    }
    let first = !consumer
        .context()
        .brokers_lost
        .swap(true, Ordering::Relaxed);
    match consumer.assignment() {
        Ok(assignment) => {
            if let Err(e) = consumer.pause(&assignment) {
                tracing::warn!(error = %e, "cannot pause the partitions after losing the brokers");
            } else if first {
                tracing::warn!(
                    partitions = %list(&assignment),
                    "every broker is gone; fetching stops until a new consumer is built (the broker may come back without the topic)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the assignment after losing the brokers"),
    }
    true
}

/// The consumer context of the engine's group consumers (email worker, intake, provisioner):
/// starts partitions over after a broker loss ([`StartOver`]), logs the group's decisions and
/// counts them.
pub struct GroupContext {
    start_over: Arc<StartOver>,
    rebalances: AtomicU64,
    /// Set once the consumer lost every broker and paused ([`pause_on_broker_loss`]).
    brokers_lost: AtomicBool,
    /// For a consumer of the events topic: each partition not started over resumes before its
    /// committed offset ([`Rewind`], docs/adr/0036).
    rewind: Option<Rewind>,
}

impl GroupContext {
    /// A context that starts partitions over as `start_over` says, and otherwise resumes each
    /// partition at its committed offset (the intake's requests topic).
    pub fn new(start_over: Arc<StartOver>) -> Self {
        Self {
            start_over,
            rebalances: AtomicU64::new(0),
            brokers_lost: AtomicBool::new(false),
            rewind: None,
        }
    }

    /// A context for a consumer of the events topic: starts partitions over as `start_over`
    /// says, and resumes every other partition before its committed offset as `rewind` says.
    pub fn with_rewind(start_over: Arc<StartOver>, rewind: Rewind) -> Self {
        Self {
            rewind: Some(rewind),
            ..Self::new(start_over)
        }
    }

    /// True when the record at `offset` lies below the committed offset its partition resumed
    /// from ([`Rewind::already_handled`]); never without a [`Rewind`].
    pub fn already_handled(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.rewind
            .as_ref()
            .is_some_and(|r| r.already_handled(topic, partition, offset))
    }

    /// How many rebalances this consumer went through.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }
}

impl ClientContext for GroupContext {}

fn list(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| e.partition().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let rewound = self.start_over.on_assign(tpl);
                if rewound.is_empty() {
                    tracing::info!(partitions = %list(tpl), "partitions assigned");
                } else {
                    tracing::warn!(
                        partitions = %list(tpl),
                        from_the_beginning = ?rewound,
                        generation = self.start_over.generation(),
                        "partitions assigned; the broker lost the topic since the group last read them, so these start from the beginning"
                    );
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = %list(tpl), "partitions revoked");
            }
            _ => {}
        }
        if let Some(rewind) = &self.rewind {
            // Partitions started over (set to the beginning above) are left where they are.
            rewind.rebalance(self, consumer, err, tpl);
            return;
        }
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance failed");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot apply the group's assignment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition("t", *p);
        }
        tpl
    }

    fn offsets(tpl: &TopicPartitionList) -> Vec<(i32, Offset)> {
        tpl.elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect()
    }

    #[test]
    fn a_topic_never_lost_keeps_the_committed_offsets() {
        let s = StartOver::new();
        let mut tpl = assignment(&[0, 1]);
        assert!(s.on_assign(&mut tpl).is_empty());
        assert_eq!(
            offsets(&tpl),
            vec![(0, Offset::Invalid), (1, Offset::Invalid)]
        );
    }

    #[test]
    fn after_a_loss_each_partition_starts_over_once_per_generation() {
        let s = StartOver::new();
        // The group started partition 1 over in generation 2 already (another member).
        s.learn(2, [(0, 1), (1, 2)]);
        let mut tpl = assignment(&[0, 1, 2]);
        assert_eq!(s.on_assign(&mut tpl), vec![0, 2]);
        assert_eq!(
            offsets(&tpl),
            vec![
                (0, Offset::Beginning),
                (1, Offset::Invalid),
                (2, Offset::Beginning)
            ]
        );
        assert_eq!(s.take_unrecorded(), vec![(0, 2), (2, 2)]);
        assert!(s.take_unrecorded().is_empty());
        // Assigned again in the same generation (a rebalance): the committed offsets hold.
        let mut tpl = assignment(&[0, 2]);
        assert!(s.on_assign(&mut tpl).is_empty());
        // The next loss starts them over again.
        s.learn(3, []);
        let mut tpl = assignment(&[0, 1, 2]);
        assert_eq!(s.on_assign(&mut tpl), vec![0, 1, 2]);
        assert_eq!(s.take_unrecorded(), vec![(0, 3), (1, 3), (2, 3)]);
    }

    #[test]
    fn a_broker_loss_is_every_broker_gone_not_one_transport_failure() {
        use rdkafka::consumer::BaseConsumer;
        // Never connects: nothing listens on port 9.
        let consumer: BaseConsumer<GroupContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "start-over-unit")
            .create_with_context(GroupContext::new(StartOver::new()))
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Beginning).unwrap();
        consumer.assign(&tpl).unwrap();
        let transport = KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(!pause_on_broker_loss(&consumer, &transport));
        let gone = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        assert!(pause_on_broker_loss(&consumer, &gone));
        assert!(consumer.context().brokers_lost.load(Ordering::Relaxed));
        // Again (the error repeats while the broker is away): still a loss, logged once.
        assert!(pause_on_broker_loss(&consumer, &gone));
    }

    #[test]
    fn what_the_group_recorded_never_lowers_what_is_known() {
        let s = StartOver::new();
        s.learn(3, [(0, 3)]);
        s.learn(2, [(0, 1)]);
        assert_eq!(s.generation(), 3);
        let mut tpl = assignment(&[0]);
        assert!(s.on_assign(&mut tpl).is_empty());
    }
}
