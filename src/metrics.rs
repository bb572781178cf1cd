//! Every metric brunnr records, by name, and the Prometheus recorder `/metrics` renders.
//!
//! Labels carry only bounded values (source, sink, outcome, reason): never a device id or a URL.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Events taken in, by `source`.
pub const EVENTS_RECEIVED: &str = "brunnr_events_received_total";
/// Events refused, by `source` and `reason`.
pub const EVENTS_REJECTED: &str = "brunnr_events_rejected_total";
/// Delivery attempts that ended, by `sink` and `outcome` (`success`, `failure`, `retry`).
pub const DELIVERIES: &str = "brunnr_deliveries_total";
/// Events not delivered, by `sink` and `reason` (`queue_full`, `cut_off`, `expired`, `shutdown`).
pub const DROPPED: &str = "brunnr_dropped_total";
/// Time from the event's arrival to its delivery, by `sink`.
pub const DELIVERY_DURATION: &str = "brunnr_delivery_duration_seconds";
/// Calls a sink made (one HTTP request, one `SendMessageBatch`, one batch of NATS publishes), by
/// `sink` and `outcome` (`ok`, `error`); with `brunnr_deliveries_total` it shows how well batching
/// works.
pub const SINK_CALLS: &str = "brunnr_sink_calls_total";
/// Norns registered.
pub const NORNS: &str = "brunnr_norns";
/// Live sessions open, by `transport`.
pub const LIVE_SESSIONS: &str = "brunnr_live_sessions";
/// Frames (WebSocket messages, SSE events) sent to live sessions, by `transport`.
pub const LIVE_FRAMES: &str = "brunnr_live_frames_sent_total";
/// Live sessions closed because they read slower than events arrived, by `transport`.
pub const LIVE_SLOW_CLOSES: &str = "brunnr_live_slow_consumer_closes_total";
/// Events sent to live sessions as replay of what they missed, by `transport`.
pub const LIVE_REPLAYED: &str = "brunnr_live_replayed_events_total";
/// Live connections refused, by `reason` (`connections`, `sessions_per_key`, `auth`,
/// `announcement`, `forbidden`).
pub const LIVE_REFUSED: &str = "brunnr_live_refused_total";
/// Live sessions closed for not answering pings, by `transport`.
pub const LIVE_PONG_TIMEOUTS: &str = "brunnr_live_pong_timeouts_total";
/// Bytes of history held in memory.
pub const HISTORY_BYTES: &str = "brunnr_history_bytes";
/// History commits to the store, by `outcome`.
pub const HISTORY_COMMITS: &str = "brunnr_history_commits_total";
/// History events kept in memory only: the store failed or fell too far behind.
pub const HISTORY_UNSAVED: &str = "brunnr_history_unsaved_total";
/// Events that no norn and no live session took (history still keeps them).
pub const EVENTS_UNROUTED: &str = "brunnr_events_unrouted_total";
/// Failure notices sent to norns' failure URLs, by `outcome`.
pub const FAILURE_NOTICES: &str = "brunnr_failure_notices_total";
/// API requests answered with an error, by `error` code.
pub const API_ERRORS: &str = "brunnr_api_errors_total";

/// The sum of a metric's samples in Prometheus text whose labels contain `labels` (0 if none).
pub fn sum_samples(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The process-wide recorder; installed once, shared by every server in the process (tests run
/// several).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(DELIVERY_DURATION.into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ],
                )
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(EVENTS_RECEIVED, "Events taken in, by source.");
    describe_counter!(EVENTS_REJECTED, "Events refused, by source and reason.");
    describe_counter!(
        DELIVERIES,
        "Delivery attempts that ended, by sink and outcome."
    );
    describe_counter!(DROPPED, "Events not delivered, by sink and reason.");
    describe_histogram!(
        DELIVERY_DURATION,
        Unit::Seconds,
        "From arrival to delivery."
    );
    describe_counter!(SINK_CALLS, "Calls sinks made, by sink.");
    describe_gauge!(NORNS, "Norns registered.");
    describe_gauge!(LIVE_SESSIONS, "Live sessions open, by transport.");
    describe_counter!(LIVE_FRAMES, "Frames sent to live sessions, by transport.");
    describe_counter!(
        LIVE_SLOW_CLOSES,
        "Live sessions closed as slow consumers, by transport."
    );
    describe_counter!(
        LIVE_REPLAYED,
        "Events replayed to live sessions, by transport."
    );
    describe_counter!(LIVE_REFUSED, "Live connections refused, by reason.");
    describe_counter!(
        LIVE_PONG_TIMEOUTS,
        "Live sessions closed for missing pongs, by transport."
    );
    describe_gauge!(HISTORY_BYTES, "Bytes of history held in memory.");
    describe_counter!(HISTORY_COMMITS, "History commits to the store, by outcome.");
    describe_counter!(HISTORY_UNSAVED, "History events kept in memory only.");
    describe_counter!(EVENTS_UNROUTED, "Events no subscription took.");
    describe_counter!(FAILURE_NOTICES, "Failure notices sent, by outcome.");
    describe_counter!(
        API_ERRORS,
        "API requests answered with an error, by error code."
    );
}
