//! Resuming a partition from a committed offset that may lie inside a record batch.
//!
//! The relay writes up to `kafka.relay_batch_records` records per Kafka batch. tansu answers a
//! fetch that starts inside a batch with the batch after it, so a consumer that resumed from a
//! committed offset in the middle of a batch would silently skip the rest of that batch
//! (docs/adr/0004, 0036). Every consumer of the events topic therefore starts each partition it
//! is given `relay_batch_records` records before the committed offset `X`, and skips what lies
//! below `X`: the batch that holds `X - N` has at most `N` records, so it ends before `X`, and the
//! batch the broker answers with starts at or before `X`. What lies below `X` was handled (the
//! consumers commit an offset only once every record below it is done), so skipping it by offset
//! is exact; nothing is handled twice that would not have been handled twice anyway.
//!
//! A partition without a committed offset starts where `auto.offset.reset` says (the log's start,
//! which is always a batch's start). A broker that answers inside a batch with that batch (Apache
//! Kafka, Redpanda) is read from `X - N` too; the records below `X` are skipped the same way.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use onboarding_config::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

/// How long the rebalance waits for the group coordinator's committed offsets, per attempt.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);
const COMMITTED_ATTEMPTS: u32 = 2;

/// Where each partition of a consumer's assignment resumed, and how far back it starts reading.
#[derive(Debug)]
pub struct Rewind {
    /// `kafka.relay_batch_records`: the longest batch the relay writes.
    back: i64,
    /// Per (topic, partition) of the assignment: the lowest offset not yet handed out, first the
    /// committed offset it resumed from (records below it were handled before), then the offset
    /// after the last record handed out.
    from: Mutex<HashMap<(String, i32), i64>>,
}

impl Rewind {
    /// Reads back as far as the relay's batches are long (`kafka.relay_batch_records`).
    pub fn new(kafka: &KafkaSettings) -> Self {
        Self::records(kafka.relay_batch_records)
    }

    /// Reads back `records` before a committed offset (at least 1).
    pub fn records(records: u32) -> Self {
        Self {
            back: i64::from(records.max(1)),
            from: Mutex::new(HashMap::new()),
        }
    }

    /// The offset to start reading at so that the record at `committed` is not skipped.
    pub fn start_for(&self, committed: i64) -> i64 {
        committed.saturating_sub(self.back).max(0)
    }

    /// True when the record at `offset` of `partition` lies below the offset the partition
    /// resumed from (it was handled before), or was handed out already since (a record the
    /// broker sent again within the assignment); the consumer skips it. Otherwise the record is
    /// handed out, and the next call expects a later one.
    pub fn already_handled(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let mut from = self.lock();
        let next = from.entry((topic.to_owned(), partition)).or_insert(0);
        if offset < *next {
            return true;
        }
        *next = offset + 1;
        false
    }

    /// Assigns `partitions` of `topic` to `consumer` (no group), each to be read from its offset
    /// as given (the first record handed out is the one at that offset, or the first after it).
    pub fn assign_at<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
        topic: &str,
        partitions: &[(i32, i64)],
    ) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        let mut from = self.lock();
        from.clear();
        for &(partition, offset) in partitions {
            tpl.add_partition_offset(topic, partition, Offset::Offset(self.start_for(offset)))?;
            from.insert((topic.to_owned(), partition), offset);
        }
        drop(from);
        consumer.assign(&tpl)
    }

    /// Rewrites a group's assignment `tpl` so that each partition with a committed offset starts
    /// [`Rewind::start_for`] it, and remembers where each resumed.
    fn rewind_assignment<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        tpl: &mut TopicPartitionList,
    ) -> KafkaResult<Vec<(i32, i64)>> {
        let mut attempt = 1;
        let committed = loop {
            match consumer.committed_offsets(tpl.clone(), COMMITTED_TIMEOUT) {
                Ok(c) => break c,
                Err(e) if attempt < COMMITTED_ATTEMPTS => {
                    tracing::debug!(error = %e, "cannot read the committed offsets; asking again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let mut resumed = Vec::new();
        let mut from = self.lock();
        for e in committed.elements() {
            e.error()?;
            if let Offset::Offset(offset) = e.offset() {
                tpl.set_partition_offset(
                    e.topic(),
                    e.partition(),
                    Offset::Offset(self.start_for(offset)),
                )?;
                from.insert((e.topic().to_owned(), e.partition()), offset);
                resumed.push((e.partition(), offset));
            }
        }
        Ok(resumed)
    }

    /// The rebalance of a group consumer whose context holds this `Rewind`: what librdkafka does
    /// by default (the context's `pre_rebalance` and `post_rebalance` included), except that an
    /// assignment starts each partition [`Rewind::start_for`] its committed offset. Call it from
    /// `ConsumerContext::rebalance`.
    ///
    /// When the committed offsets cannot be read, the partitions are not read at all: they stay
    /// this member's, unread, until the group rebalances (the consumers' watchdogs rejoin the
    /// group when records wait on a partition whose committed offset stands still), rather than
    /// read from a committed offset that may skip records.
    pub fn rebalance<C: ConsumerContext>(
        &self,
        context: &C,
        consumer: &BaseConsumer<C>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                context.pre_rebalance(consumer, &Rebalance::Assign(tpl));
                if !cooperative {
                    self.lock().clear();
                }
                let assignment = match self.rewind_assignment(consumer, tpl) {
                    Ok(resumed) => {
                        if !resumed.is_empty() {
                            tracing::debug!(
                                ?resumed,
                                back = self.back,
                                "partitions resume before their committed offsets"
                            );
                        }
                        tpl.clone()
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the group's committed offsets; the assigned partitions stay unread until the group rebalances");
                        TopicPartitionList::new()
                    }
                };
                let result = if cooperative {
                    consumer.incremental_assign(&assignment)
                } else {
                    consumer.assign(&assignment)
                };
                context.post_rebalance(consumer, &Rebalance::Assign(&assignment));
                result
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                context.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                let result = if cooperative {
                    let mut from = self.lock();
                    for e in tpl.elements() {
                        from.remove(&(e.topic().to_owned(), e.partition()));
                    }
                    drop(from);
                    consumer.incremental_unassign(tpl)
                } else {
                    self.lock().clear();
                    consumer.unassign()
                };
                context.post_rebalance(consumer, &Rebalance::Revoke(tpl));
                result
            }
            other => {
                let error = KafkaError::Rebalance(other.into());
                tracing::error!(error = %error, "rebalance failed");
                context.pre_rebalance(consumer, &Rebalance::Error(error.clone()));
                // As librdkafka's default: whatever went wrong, give the partitions up.
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                self.lock().clear();
                context.post_rebalance(consumer, &Rebalance::Error(error));
                result
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot change the consumer's assignment");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), i64>> {
        // A panic while holding the map leaves it as consistent as before: take it anyway.
        self.from.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_holding_the_offset_read_back_ends_before_the_committed_offset() {
        // Every way of cutting a partition into batches of at most N records: the batch holding
        // start_for(X) ends at or before X - 1, so the batch tansu answers with (that one, or the
        // one after it) starts at or before X.
        for n in 1..=6u32 {
            let rewind = Rewind::records(n);
            for x in 0..40i64 {
                let start = rewind.start_for(x);
                assert!(start <= x && x - start <= i64::from(n));
                for base in (start - i64::from(n) + 1).max(0)..=start {
                    let last = base + i64::from(n) - 1;
                    assert!(
                        start == base || last < x,
                        "n {n}, committed {x}: a batch {base}..={last} holds the start {start} and the committed offset"
                    );
                }
            }
        }
    }

    #[test]
    fn records_below_the_resume_point_or_sent_again_are_skipped() {
        let rewind = Rewind::records(100);
        rewind.lock().insert(("t".into(), 2), 150);
        assert_eq!(rewind.start_for(150), 50);
        assert_eq!(rewind.start_for(30), 0);
        assert!(rewind.already_handled("t", 2, 50));
        assert!(rewind.already_handled("t", 2, 149));
        assert!(!rewind.already_handled("t", 2, 150));
        assert!(!rewind.already_handled("t", 2, 152));
        // A record sent again within the assignment is handed out once.
        assert!(rewind.already_handled("t", 2, 150));
        assert!(rewind.already_handled("t", 2, 152));
        assert!(!rewind.already_handled("t", 2, 153));
        // Other partitions and topics have their own offsets; one without a committed offset
        // starts wherever the broker starts it.
        assert!(!rewind.already_handled("t", 1, 3));
        assert!(rewind.already_handled("t", 1, 3));
        assert!(!rewind.already_handled("u", 2, 3));
    }
}
