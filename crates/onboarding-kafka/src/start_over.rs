//! A consumer after the broker lost its topic (docs/adr/0037, 0038).
//!
//! A broker that lost its data (an in-memory broker that restarted, a topic deleted by hand)
//! comes back with a topic whose offsets start again at 0, while a consumer that lived through it
//! still holds the offsets of the lost topic, the ones it stored and did not commit before the
//! broker went. Whenever that consumer commits them (its auto-commit once the broker is
//! back, the revocation of its partitions, its close), they land in its group, and a consumer that
//! later resumes from the group's offsets skips the new topic's records below them.
//!
//! So a group's committed offsets are only trusted within one generation of the topic. The relay
//! counts each recreation of the event topic in PostgreSQL (`topic_generations`); each consumer
//! reads its topic in a consumer group of that generation ([`group_in_generation`]): the
//! configured group in generation 0, `GROUP.generation-N` after the N-th loss. A new group has no
//! offsets, so its consumers start at the beginning of the new topic; an old consumer's commits go
//! to the old group, which nobody reads again. A consumer that sees the generation move builds a
//! new consumer in the new group. Re-reading is safe: every consumer of the engine is idempotent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, TopicPartitionList};

use crate::resume::Rewind;
use crate::watchdog::CHECK_EVERY;

/// The consumer group that reads a topic in `generation`: `group` itself before any loss (0),
/// `GROUP.generation-N` after the N-th.
pub fn group_in_generation(group: &str, generation: i64) -> String {
    if generation <= 0 {
        group.to_owned()
    } else {
        format!("{group}.generation-{generation}")
    }
}

/// The generation of the event topic a consumer follows, and the group it reads in.
#[derive(Debug)]
pub struct Generation {
    /// The configured consumer group (generation 0's).
    group: String,
    /// The topic the consumer reads, for the logs.
    topic: String,
    known: i64,
    checked: Option<Instant>,
}

impl Generation {
    /// A consumer of `topic` in the configured `group` that starts in `generation` (read from
    /// PostgreSQL before the consumer is built).
    pub fn new(group: &str, topic: &str, generation: i64) -> Self {
        let this = Self {
            group: group.to_owned(),
            topic: topic.to_owned(),
            known: generation.max(0),
            checked: Some(Instant::now()),
        };
        if this.known > 0 {
            tracing::info!(
                generation = this.known,
                topic = %this.topic,
                group = %this.group(),
                "the broker lost the event topic before; reading in the consumer group of this generation"
            );
        }
        this
    }

    /// The generation the consumer reads in.
    pub fn known(&self) -> i64 {
        self.known
    }

    /// The consumer group of the known generation.
    pub fn group(&self) -> String {
        group_in_generation(&self.group, self.known)
    }

    /// Sets `group.id` of `config` to the group of the known generation.
    pub fn configure(&self, config: &mut ClientConfig) {
        config.set("group.id", self.group());
    }

    /// Whether the generation is to be read again: every [`CHECK_EVERY`].
    pub fn due(&mut self) -> bool {
        if self.checked.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
            return false;
        }
        self.checked = Some(Instant::now());
        true
    }

    /// Every [`CHECK_EVERY`], reads the generation with `read` (a query of PostgreSQL,
    /// `Store::topic_generation`) and learns it; true when it moved ([`Generation::learn`]). A
    /// read that fails changes nothing and is tried again next time.
    pub async fn moved<E: std::fmt::Display>(
        &mut self,
        read: impl std::future::Future<Output = Result<i64, E>>,
    ) -> bool {
        if !self.due() {
            return false;
        }
        match read.await {
            Ok(generation) => self.learn(generation),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the topic's generation; will retry");
                false
            }
        }
    }

    /// Learns the generation read from PostgreSQL; true when it moved since the consumer was
    /// built (the caller then builds a consumer in [`Generation::group`]).
    pub fn learn(&mut self, generation: i64) -> bool {
        if generation <= self.known {
            return false;
        }
        self.known = generation;
        tracing::warn!(
            generation,
            topic = %self.topic,
            group = %self.group(),
            "the relay recreated the event topic after the broker lost it; building a new consumer in the group of this generation, which starts from the beginning"
        );
        metrics::counter!("onboard_consumer_start_overs_total").increment(1);
        true
    }
}

/// How long [`pause_on_broker_loss`] waits for a broker to answer after a connection failed.
const STILL_SERVED_WITHIN: Duration = Duration::from_millis(1500);

/// Stops a consumer from fetching once its broker may be gone (docs/adr/0037, 0042). Returns true
/// when the consumer stays paused: the caller then builds a new consumer once the broker answers
/// again, or once the relay recreated the topic. Blocks up to [`STILL_SERVED_WITHIN`] on a
/// transport failure (call it from `block_in_place` in async code).
///
/// - `AllBrokersDown`, or a topic the broker does not know (`UnknownTopicOrPartition`): pauses
///   every partition assigned to the consumer.
/// - `BrokerTransportFailure` (one connection failed): pauses every partition at once, then asks
///   the cluster for its metadata. When a broker answers and knows every assigned topic, the
///   partitions are resumed and this returns false; otherwise they stay paused. A failure is
///   often the first sign of a lost broker, and `AllBrokersDown` may only come after the broker
///   is back (docs/adr/0042). A consumer that paused for a loss before is not resumed.
/// - Any other error changes nothing.
///
/// A broker that comes back without the topic (an in-memory broker that restarted) must not be
/// asked for it by the old consumer. tansu 0.6.0 answers a fetch for a topic it does not know
/// with a nil topic id and a leader for each partition; librdkafka 2.12.1 (rdkafka-sys
/// 4.10.0) turns that leader into a metadata update without a topic name and dies of SIGSEGV in
/// `rd_kafka_metadata_update_op` (strcmp on the missing name) within a second of reconnecting.
/// A paused partition is not fetched; a new consumer learns the topic (and its new id) from the
/// broker before it fetches. A revocation and a new assignment by the group do not keep a
/// pause, so once a consumer lost its brokers, [`GroupContext`] takes no partition the group
/// assigns to it: in the CI campaign of seed 14615302318191445768 the partitions the group gave
/// back to a paused consumer were fetched again (docs/adr/0042).
///
/// Each loss pauses the assignment again (partitions assigned meanwhile included); only the
/// first is logged.
pub fn pause_on_broker_loss(consumer: &impl Consumer<GroupContext>, error: &KafkaError) -> bool {
    let why = match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::AllBrokersDown) => "every broker is gone",
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => "the broker does not know the topic",
        Some(RDKafkaErrorCode::BrokerTransportFailure) => "a broker connection failed",
        _ => return false,
    };
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the assignment after losing a broker");
            return false;
        }
    };
    if let Err(e) = consumer.pause(&assignment) {
        tracing::warn!(error = %e, "cannot pause the partitions after losing a broker");
        return false;
    }
    // A consumer paused for a loss before stays paused: the topic it resumed may be a new one.
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::BrokerTransportFailure)
        && !consumer.context().brokers_lost.load(Ordering::Relaxed)
        && still_served(consumer, &assignment)
    {
        if let Err(e) = consumer.resume(&assignment) {
            tracing::warn!(error = %e, "cannot resume the partitions after a connection failed");
            return true;
        }
        return false;
    }
    let first = !consumer
        .context()
        .brokers_lost
        .swap(true, Ordering::Relaxed);
    if first {
        tracing::warn!(
            partitions = %list(&assignment),
            "{why}; fetching stops until a new consumer is built (the broker may come back without the topic)"
        );
    }
    true
}

/// Whether a broker answers within [`STILL_SERVED_WITHIN`] and knows every topic of `assignment`.
fn still_served(consumer: &impl Consumer<GroupContext>, assignment: &TopicPartitionList) -> bool {
    // Every topic, not the assigned ones: a metadata request naming a topic may create it on a
    // broker that creates topics on demand.
    let metadata = match consumer.fetch_metadata(None, STILL_SERVED_WITHIN) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "no broker answers after a connection failed");
            return false;
        }
    };
    assignment.elements().iter().all(|e| {
        metadata
            .topics()
            .iter()
            .any(|t| t.name() == e.topic() && t.error().is_none() && !t.partitions().is_empty())
    })
}

/// The consumer context of the engine's group consumers (email worker, intake, provisioner):
/// logs the group's decisions, counts them, and knows when the consumer lost every broker.
pub struct GroupContext {
    rebalances: AtomicU64,
    /// Set once the consumer lost every broker and paused ([`pause_on_broker_loss`]).
    brokers_lost: AtomicBool,
    /// For a consumer of the events topic: each partition resumes before its committed offset ([`Rewind`], docs/adr/0036).
    rewind: Option<Rewind>,
}

impl GroupContext {
    /// A context that resumes each partition at its committed offset (the intake's requests
    /// topic).
    pub fn new() -> Self {
        Self {
            rebalances: AtomicU64::new(0),
            brokers_lost: AtomicBool::new(false),
            rewind: None,
        }
    }

    /// A context for a consumer of the events topic: resumes each partition before its
    /// committed offset as `rewind` says.
    pub fn with_rewind(rewind: Rewind) -> Self {
        Self {
            rewind: Some(rewind),
            ..Self::new()
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

    /// Whether this consumer lost its brokers ([`pause_on_broker_loss`]): it fetches nothing
    /// more, and the caller builds a new consumer once a broker answers again.
    pub fn lost_brokers(&self) -> bool {
        self.brokers_lost.load(Ordering::Relaxed)
    }
}

impl Default for GroupContext {
    fn default() -> Self {
        Self::new()
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
            // A consumer that lost its brokers must not fetch again (the broker may be back
            // without the topic, or with a new topic of the same name): it takes none of the
            // partitions, which stay its own, unread, until it leaves the group for the
            // consumer that replaces it.
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if self.lost_brokers() => {
                tracing::warn!(
                    partitions = %list(tpl),
                    "partitions assigned after the brokers were lost are left unread until a new consumer is built"
                );
                // Eager: the consumer holds an empty assignment. Cooperative: nothing is added.
                if !matches!(
                    consumer.rebalance_protocol(),
                    RebalanceProtocol::Cooperative
                ) {
                    if let Err(e) = consumer.assign(&TopicPartitionList::new()) {
                        tracing::warn!(error = %e, "cannot apply the group's assignment");
                    }
                }
                return;
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                tracing::info!(partitions = %list(tpl), "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(partitions = %list(tpl), "partitions revoked");
            }
            _ => {}
        }
        if let Some(rewind) = &self.rewind {
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

    #[test]
    fn each_generation_reads_in_a_group_of_its_own() {
        assert_eq!(
            group_in_generation("onboarding-intake", 0),
            "onboarding-intake"
        );
        assert_eq!(
            group_in_generation("onboarding-intake", 2),
            "onboarding-intake.generation-2"
        );
        let mut g = Generation::new("workers", "t", 0);
        assert_eq!(g.group(), "workers");
        let mut config = ClientConfig::new();
        g.configure(&mut config);
        assert_eq!(config.get("group.id"), Some("workers"));
        // The relay recreated the topic: the consumer moves to the new generation's group.
        assert!(g.learn(1));
        assert_eq!(g.group(), "workers.generation-1");
        g.configure(&mut config);
        assert_eq!(config.get("group.id"), Some("workers.generation-1"));
        // Reading the same generation again, or an older one, changes nothing.
        assert!(!g.learn(1));
        assert!(!g.learn(0));
        assert_eq!(g.known(), 1);
        // A consumer built after two losses starts in the second one's group.
        assert_eq!(
            Generation::new("workers", "t", 2).group(),
            "workers.generation-2"
        );
    }

    #[test]
    fn the_generation_is_read_again_every_few_seconds() {
        let mut g = Generation::new("workers", "t", 0);
        // Just read (at start): not due yet.
        assert!(!g.due());
        g.checked = Some(Instant::now() - CHECK_EVERY);
        assert!(g.due());
        assert!(!g.due());
    }

    #[test]
    fn a_consumer_pauses_when_its_broker_is_gone_and_not_for_other_errors() {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::Offset;
        // Never connects: nothing listens on port 9.
        let consumer: BaseConsumer<GroupContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "start-over-unit")
            .create_with_context(GroupContext::new())
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Beginning).unwrap();
        consumer.assign(&tpl).unwrap();
        // An error that says nothing of the brokers changes nothing.
        let other = KafkaError::MessageConsumption(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(!pause_on_broker_loss(&consumer, &other));
        assert!(!consumer.context().brokers_lost.load(Ordering::Relaxed));
        // One connection failed and no broker answers: the first sign of a lost broker.
        let transport = KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(pause_on_broker_loss(&consumer, &transport));
        assert!(consumer.context().brokers_lost.load(Ordering::Relaxed));
        // Then every broker gone, and the topic unknown: still a loss, logged once.
        let gone = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        assert!(pause_on_broker_loss(&consumer, &gone));
        let unknown = KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert!(pause_on_broker_loss(&consumer, &unknown));
    }
}
