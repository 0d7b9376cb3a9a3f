//! `GET /metrics`: counters, gauges and latency histograms in the Prometheus text format.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use internvl::engine::Engine;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Finished HTTP requests by route and status code.
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    /// Requests whose client went away before the end.
    pub cancelled: IntCounter,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    /// From the request's arrival to its last token.
    pub request_latency: Histogram,
    /// Sequences waiting for admission (new or preempted).
    pub queue_depth: IntGauge,
    pub running: IntGauge,
    pub kv_blocks_free: IntGauge,
    pub kv_blocks_total: IntGauge,
    pub preemptions: IntCounter,
    /// Sequences per decode pass.
    pub decode_batch: Histogram,
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid histogram options")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let latency = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ];
        let per_token = [
            0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let m = Metrics {
            registry: Registry::new(),
            requests: IntCounterVec::new(
                Opts::new("internvl_http_requests_total", "HTTP requests answered"),
                &["route", "status"],
            )
            .expect("valid counter options"),
            prompt_tokens: IntCounter::new(
                "internvl_prompt_tokens_total",
                "Prompt tokens of admitted requests (image tokens included)",
            )
            .expect("valid counter options"),
            generation_tokens: IntCounter::new(
                "internvl_generation_tokens_total",
                "Tokens generated",
            )
            .expect("valid counter options"),
            cancelled: IntCounter::new(
                "internvl_requests_cancelled_total",
                "Requests whose client went away before the answer ended",
            )
            .expect("valid counter options"),
            time_to_first_token: histogram(
                "internvl_time_to_first_token_seconds",
                "From a request's arrival to its first generated token",
                &latency,
            ),
            time_per_output_token: histogram(
                "internvl_time_per_output_token_seconds",
                "Between consecutive generated tokens of a request",
                &per_token,
            ),
            request_latency: histogram(
                "internvl_request_latency_seconds",
                "From a request's arrival to its last generated token",
                &latency,
            ),
            queue_depth: IntGauge::new(
                "internvl_queue_depth",
                "Requests waiting for a place in the running batch",
            )
            .expect("valid gauge options"),
            running: IntGauge::new("internvl_running_requests", "Requests in the running batch")
                .expect("valid gauge options"),
            kv_blocks_free: IntGauge::new("internvl_kv_cache_free_blocks", "Free KV cache blocks")
                .expect("valid gauge options"),
            kv_blocks_total: IntGauge::new("internvl_kv_cache_blocks", "KV cache blocks in all")
                .expect("valid gauge options"),
            preemptions: IntCounter::new(
                "internvl_preemptions_total",
                "Sequences preempted for lack of KV cache (prefilled again later)",
            )
            .expect("valid counter options"),
            decode_batch: histogram(
                "internvl_decode_batch_size",
                "Sequences decoded together in one forward pass",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 13] = [
            Box::new(m.requests.clone()),
            Box::new(m.prompt_tokens.clone()),
            Box::new(m.generation_tokens.clone()),
            Box::new(m.cancelled.clone()),
            Box::new(m.time_to_first_token.clone()),
            Box::new(m.time_per_output_token.clone()),
            Box::new(m.request_latency.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.running.clone()),
            Box::new(m.kv_blocks_free.clone()),
            Box::new(m.kv_blocks_total.clone()),
            Box::new(m.preemptions.clone()),
            Box::new(m.decode_batch.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Copies the engine's queue and cache figures into the gauges.
    pub fn observe_engine(&self, engine: &Engine) {
        self.queue_depth.set(engine.waiting() as i64);
        self.running.set(engine.running() as i64);
        let (free, total) = engine.kv_blocks();
        self.kv_blocks_free.set(free as i64);
        self.kv_blocks_total.set(total as i64);
        let seen = self.preemptions.get();
        self.preemptions
            .inc_by(engine.preemptions().saturating_sub(seen));
    }

    /// Records what the engine's last step did.
    pub fn observe_step(&self, engine: &Engine) {
        if engine.last_batch() > 0 {
            self.decode_batch.observe(engine.last_batch() as f64);
        }
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a broken metric, reported in place.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# encoding the metrics failed: {e}\n");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
