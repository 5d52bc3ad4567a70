//! The receive loop: one consumer in the email workers' group receives records, hands each to
//! its user's lane ([`onboarding_kafka::lanes`]) and stores each partition's offset as the lanes report
//! every record up to it handled; it rejoins the group when the broker came back empty or the
//! watchdog sees records wait on a partition nobody reads (docs/adr/0004, 0022). Each partition
//! it is given is read from `kafka.relay_batch_records` records before its committed offset, and
//! the records below that offset are skipped: they were handled (docs/adr/0036). It stops
//! fetching when it lost every broker, and starts its partitions over with a new consumer when
//! the relay recreated the topic (docs/adr/0037).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onboarding_config::Settings;
use onboarding_kafka::{group_consumer_config, Generation, GroupContext, Rewind, Watchdog};
use onboarding_store::Store;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delivery::Delivery;
use crate::records::RecordHandler;
use crate::retry;
use crate::WorkerError;
use onboarding_kafka::lanes::{HandleFuture, Handled, Lane, Lanes};

/// Consumes the public event topic and mails what its records ask for (see the crate's
/// invariants).
pub struct EmailWorker {
    records: Arc<RecordHandler>,
    /// Shared with the watchdog's measurement while one runs (on the blocking pool).
    consumer: Arc<WorkerConsumer>,
    consumer_config: rdkafka::ClientConfig,
    topic: String,
    /// `kafka.relay_batch_records`: how far before a committed offset a partition is read.
    relay_batch_records: u32,
    store: Store,
    /// The topic's generation: the worker reads in the consumer group of the generation
    /// (docs/adr/0038).
    generation: Generation,
    watchdog: Watchdog,
    /// The consumer's rebalance count when the watchdog last looked.
    rebalances_seen: u64,
    /// Records in flight at most (`kafka.email_worker_concurrency`).
    concurrency: NonZeroUsize,
    /// How old a dead worker's claim on a mail must be before this one takes it over.
    takeover_after: chrono::Duration,
}

/// How long the worker waits for a record before it counts as idle.
const IDLE_TICK: Duration = Duration::from_secs(1);

impl EmailWorker {
    /// A worker in `kafka.email_worker_group` (or its group of `generation`, the topic's
    /// generation read from PostgreSQL).
    pub fn new(settings: &Settings, store: Store, generation: i64) -> Result<Self, WorkerError> {
        let concurrency = settings.kafka.email_worker_concurrency;
        // One SMTP connection per record in flight, and one for the retry task.
        let delivery = Delivery::new(settings, store.clone(), concurrency.saturating_add(1))?;
        let generation = Generation::new(
            &settings.kafka.email_worker_group,
            &settings.kafka.topic,
            generation,
        );
        let mut consumer_config =
            group_consumer_config(&settings.kafka, &settings.kafka.email_worker_group);
        generation.configure(&mut consumer_config);
        // Notice a recreated topic (after a broker lost its data) within seconds.
        consumer_config.set("topic.metadata.refresh.interval.ms", "5000");
        let relay_batch_records = settings.kafka.relay_batch_records;
        let consumer = Arc::new(subscribe(
            &consumer_config,
            &settings.kafka.topic,
            relay_batch_records,
        )?);
        Ok(Self {
            records: Arc::new(RecordHandler::new(
                delivery,
                onboarding_kafka::producer(&settings.kafka)?,
                onboarding_kafka::dead_letter_topic(&settings.kafka),
            )),
            consumer,
            consumer_config,
            topic: settings.kafka.topic.clone(),
            relay_batch_records,
            store,
            generation,
            watchdog: Watchdog::new(
                &settings.kafka.topic,
                Duration::from_secs(settings.kafka.email_worker_stall_seconds),
                "onboard_consumer_lag",
            ),
            rebalances_seen: 0,
            takeover_after: retry::takeover_after(settings.output_adapter.email.timeout_seconds),
            // A u32 always fits a usize on the platforms the engine builds for.
            concurrency: NonZeroUsize::new(concurrency.get() as usize).unwrap_or(NonZeroUsize::MIN),
        })
    }

    /// Consumes until `shutdown`; finishes the records in hand, then commits stored offsets.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        match self.records.delivery().mailer().test_connection().await {
            Ok(true) => tracing::info!("email worker started; SMTP server answers"),
            Ok(false) | Err(_) => {
                tracing::warn!("email worker started, but the SMTP server does not answer yet; mails will be retried")
            }
        }
        // Mails that failed transiently wait in the delayed store, not on the partition; a task
        // of their own tries them when they are due. It finishes the attempt in hand at shutdown.
        let stop_retries = shutdown.child_token();
        let retries = tokio::spawn(retry::run(
            self.records.delivery().clone(),
            self.takeover_after,
            stop_retries.clone(),
        ));
        let result = self.consume(shutdown).await;
        stop_retries.cancel();
        let _ = retries.await;
        result
    }

    /// Receives records while fewer than `concurrency` are in flight and hands each to its
    /// user's lane; stores each partition's offset as the lanes report records handled.
    async fn consume(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let records = self.records.clone();
        let stop = shutdown.clone();
        let mut lanes: Lanes<OwnedMessage> = Lanes::new(
            self.concurrency,
            shutdown.clone(),
            Arc::new(move |msg| -> HandleFuture {
                let (records, stop) = (records.clone(), stop.clone());
                // The record's span, in the trace its headers carry (docs/adr/0029).
                let span = onboarding_kafka::trace_context::follow(
                    msg.headers(),
                    tracing::info_span!(
                        "email worker record",
                        partition = msg.partition(),
                        offset = msg.offset()
                    ),
                );
                Box::pin(
                    async move { records.handle_until_recorded(&msg, &stop).await }
                        .instrument(span),
                )
            }),
        );
        // Set when the broker became unreachable; cleared by the next record. A broker that comes
        // back without our consumer group (an in-memory broker that restarted) leaves the
        // consumer waiting forever, so after a quiet spell a fresh consumer rejoins.
        let mut disrupted = false;
        let mut quiet = Duration::ZERO;
        loop {
            if self
                .generation
                .moved(self.store.topic_generation(&self.topic))
                .await
            {
                self.drain_and_rejoin(&mut lanes).await?;
                disrupted = false;
                quiet = Duration::ZERO;
            }
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                handled = lanes.handled() => {
                    self.store_offset(handled?);
                    metrics::gauge!("onboard_mail_in_flight").set(lanes.in_flight() as f64);
                    // Measures the lag; a busy worker never rejoins.
                    self.watch(false).await;
                    continue;
                }
                m = tokio::time::timeout(IDLE_TICK, self.consumer.recv()), if lanes.has_room() => m,
            };
            match received {
                Ok(Ok(m)) => {
                    disrupted = false;
                    quiet = Duration::ZERO;
                    // Read again from before the committed offset (a batch's start): handled.
                    if self
                        .consumer
                        .context()
                        .already_handled(m.topic(), m.partition(), m.offset())
                    {
                        continue;
                    }
                    // Asks for no mail: handled as it is received, beside its user's lane.
                    if crate::records::needs_nothing(&m) {
                        if let Some(handled) = lanes.pass(m.partition(), m.offset()) {
                            self.store_offset(handled);
                        }
                        continue;
                    }
                    let lane = Lane::of(m.partition(), m.key());
                    lanes.dispatch(lane, m.partition(), m.offset(), m.detach());
                    metrics::gauge!("onboard_mail_in_flight").set(lanes.in_flight() as f64);
                }
                Ok(Err(e)) => {
                    disrupted = true;
                    tracing::warn!(error = %e, "kafka receive failed; retrying");
                    // Fetches nothing more until a new consumer is built (below, or when the
                    // generation moves).
                    tokio::task::block_in_place(|| {
                        onboarding_kafka::start_over::pause_on_broker_loss(
                            self.consumer.as_ref(),
                            &e,
                        )
                    });
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(_idle) => {
                    quiet += IDLE_TICK;
                    // A consumer that lost its brokers fetches nothing more, whatever it received since.
                    let lost = self.consumer.context().lost_brokers();
                    if (disrupted || lost) && quiet >= Duration::from_secs(10) {
                        tracing::warn!(
                            "no records since the broker came back; rejoining the consumer group"
                        );
                        self.drain_and_rejoin(&mut lanes).await?;
                        disrupted = false;
                        quiet = Duration::ZERO;
                    } else if self.watch(lanes.in_flight() == 0).await {
                        self.drain_and_rejoin(&mut lanes).await?;
                    }
                }
            }
        }
        self.drain(&mut lanes).await;
        self.close().await
    }

    /// Stores a partition's offset once the lanes report every record up to it handled.
    /// Auto-commit commits it.
    fn store_offset(&self, handled: Handled) {
        if let Err(e) = self
            .consumer
            .store_offset(&self.topic, handled.partition, handled.offset)
        {
            // The partition was revoked in a rebalance meanwhile: its new holder reads the
            // record again, and handling it again sends nothing twice.
            tracing::debug!(
                error = %e,
                partition = handled.partition,
                offset = handled.offset,
                "cannot store the offset of a handled record (partition revoked?); it will be seen again"
            );
        }
    }

    /// Waits until every lane finished the records it holds and stores their offsets.
    async fn drain(&mut self, lanes: &mut Lanes<OwnedMessage>) {
        for handled in lanes.drain().await {
            self.store_offset(handled);
        }
        metrics::gauge!("onboard_mail_in_flight").set(0.0);
    }

    /// Finishes the records in hand (their offsets belong to this consumer), then rejoins.
    async fn drain_and_rejoin(
        &mut self,
        lanes: &mut Lanes<OwnedMessage>,
    ) -> Result<(), WorkerError> {
        self.drain(lanes).await;
        self.rejoin().await
    }

    /// Measures the lag now and then, beside the loop; true when the worker should rejoin the
    /// group so that it reassigns the partitions: it is idle (no record in flight) and a
    /// partition's records wait while its committed offset stands still.
    async fn watch(&mut self, idle: bool) -> bool {
        let lags = match self.watchdog.poll(&self.consumer).await {
            None => return false,
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "cannot measure the consumer lag");
                return false;
            }
        };
        // After a rebalance the partitions' new holders get the whole stall time.
        let rebalances = self.consumer.context().rebalances();
        if rebalances != self.rebalances_seen {
            self.rebalances_seen = rebalances;
            self.watchdog.reset();
        }
        let stalled = self.watchdog.stalled(&lags, Instant::now());
        if idle && !stalled.is_empty() {
            let waiting: Vec<String> = lags
                .iter()
                .filter(|l| stalled.contains(&l.partition))
                .map(|l| {
                    format!(
                        "{}: {} waiting at offset {}",
                        l.partition,
                        l.high_watermark - l.committed,
                        l.committed
                    )
                })
                .collect();
            tracing::warn!(partitions = %waiting.join("; "), "records wait on partitions nobody reads; rejoining the consumer group");
            metrics::counter!("onboard_consumer_rejoins_total").increment(1);
            return true;
        }
        false
    }

    /// Leaves the consumer group (committing what was handled) and joins the group of the known
    /// generation.
    async fn rejoin(&mut self) -> Result<(), WorkerError> {
        // The measurement in flight lets go of the consumer first.
        self.watchdog.settle().await;
        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
        self.generation.configure(&mut self.consumer_config);
        self.consumer = Arc::new(subscribe(
            &self.consumer_config,
            &self.topic,
            self.relay_batch_records,
        )?);
        self.watchdog.reset();
        self.rebalances_seen = 0;
        Ok(())
    }

    async fn close(mut self) -> Result<(), WorkerError> {
        self.watchdog.settle().await;
        if let Err(e) = onboarding_kafka::commit_stored(self.consumer.as_ref()) {
            tracing::warn!(error = %e, "final offset commit failed; records may be seen again");
        }
        tracing::info!("email worker stopped");
        Ok(())
    }
}

type WorkerConsumer = StreamConsumer<GroupContext>;

fn subscribe(
    config: &rdkafka::ClientConfig,
    topic: &str,
    relay_batch_records: u32,
) -> Result<WorkerConsumer, WorkerError> {
    Ok(onboarding_kafka::subscribe(
        config,
        topic,
        GroupContext::with_rewind(Rewind::records(relay_batch_records)),
    )?)
}
