//! The outbox backlog as gauges: how many rows wait for the broker, and how long the oldest has
//! waited, so that an operator sees a relay that cannot publish before users miss their mail.

use sqlx::PgPool;

/// Rows waiting in `outbox`.
pub const BACKLOG: &str = "onboard_outbox_backlog";
/// Seconds since the oldest waiting row's event was recorded; 0 when nothing waits.
pub const OLDEST_AGE: &str = "onboard_outbox_oldest_age_seconds";

/// Reads the backlog and sets both gauges. When PostgreSQL cannot be asked, the gauges keep
/// their last values (readiness says that the database is missing).
pub async fn measure(pool: &PgPool) {
    // The oldest row is the one with the lowest id (ids are drawn in commit order).
    let read: Result<(i64, Option<f64>), sqlx::Error> = sqlx::query_as(
        "SELECT count(*), \
         (SELECT extract(epoch FROM clock_timestamp() - recorded_at)::float8 \
          FROM outbox ORDER BY id LIMIT 1) \
         FROM outbox",
    )
    .fetch_one(pool)
    .await;
    match read {
        Ok((rows, oldest)) => {
            metrics::gauge!(BACKLOG).set(rows as f64);
            metrics::gauge!(OLDEST_AGE).set(oldest.unwrap_or(0.0).max(0.0));
        }
        Err(e) => tracing::debug!(error = %e, "cannot measure the outbox backlog"),
    }
}
