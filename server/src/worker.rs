//! The model's thread: it owns the [`Engine`] (the batched decoder over the paged KV cache) and runs it
//! step after step while there is work, taking new jobs between steps. The async HTTP handlers never run
//! model code; they prepare a request (images decoded, prompt tokenized) and hand it over as a [`Job`].
//!
//! A job's events go back over its own channel. When the client goes away, the handler's receiver is
//! dropped; the thread sees the closed channel before the next step and cancels the sequence, which frees
//! its KV blocks.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use internvl::engine::{Engine, EngineConfig, SeqId, SeqRequest, StepEvent};
use internvl::{FinishReason, InternVlModel};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::stop::StopMatcher;

/// One completion to run.
pub struct Job {
    pub request: SeqRequest,
    pub stop: Vec<String>,
    /// Where the answer goes; when the receiver is dropped (the client went away) generation stops.
    pub events: UnboundedSender<Event>,
    /// When the HTTP request arrived (time to first token counts from here).
    pub received: Instant,
}

/// What a job reports, in order: `Started` then `Text`s then `Finished`, or `Failed` at any point.
#[derive(Debug)]
pub enum Event {
    Started {
        prompt_tokens: usize,
    },
    Text(String),
    Finished {
        finish_reason: &'static str,
        completion_tokens: usize,
    },
    Failed(ApiError),
}

/// Why the model thread did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("allocating the KV cache: {0}")]
    Engine(#[from] internvl::Error),
    #[error("starting the model thread: {0}")]
    Thread(std::io::Error),
    #[error("the model thread ended while starting")]
    Ended,
}

/// The handlers' side of the model thread.
#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Jobs submitted and not yet finished (waiting or running).
    pending: Arc<AtomicUsize>,
    pub model: Arc<InternVlModel>,
    /// The model's context, in tokens.
    pub context: usize,
    pub engine: EngineConfig,
}

impl Worker {
    /// Starts the model thread with an engine of `config` over `model`. The thread ends when every
    /// `Worker` clone is dropped and its work is done.
    pub fn start(
        model: Arc<InternVlModel>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Worker, StartError> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let thread_model = model.clone();
        let thread_pending = pending.clone();
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || {
                // On a GPU, one short request runs before the server says it is ready, so the first
                // user request does not pay for the kernels' one-time set-up (the AWQ autotuner).
                let engine = match Engine::new(&thread_model, config).and_then(|mut engine| {
                    engine.warm_up()?;
                    Ok(engine)
                }) {
                    Ok(engine) => engine,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(*engine.config()));
                Runner {
                    model: &thread_model,
                    config,
                    engine,
                    active: HashMap::new(),
                    pending: thread_pending,
                    metrics,
                }
                .run(receiver);
            })
            .map_err(StartError::Thread)?;
        let engine = ready_rx.recv().map_err(|_| StartError::Ended)??;
        let context = model.text.llm.config().max_position_embeddings;
        Ok(Worker {
            jobs,
            pending,
            model,
            context,
            engine,
        })
    }

    /// Queues `job`; false when the model thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Jobs submitted and not yet finished.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}

/// A job the engine is working on.
struct Active {
    events: UnboundedSender<Event>,
    stop: StopMatcher,
    completion_tokens: usize,
    received: Instant,
    last_token: Option<Instant>,
}

struct Runner<'m> {
    model: &'m InternVlModel,
    config: EngineConfig,
    engine: Engine<'m>,
    active: HashMap<SeqId, Active>,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Runner<'_> {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            if self.engine.is_idle() {
                // Nothing to decode: give the memory of the last burst back, then sleep until a job comes
                // (or every sender is gone).
                release_free_heap();
                match jobs.recv() {
                    Ok(job) => self.accept(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.accept(job);
            }
            self.drop_abandoned();
            if !self.engine.is_idle() {
                // A panic inside the model code must not take the server down: the requests in flight
                // get a 500 and a fresh engine (new KV cache) takes over. Nothing of the old engine is used
                // after the unwind, which is what makes the AssertUnwindSafe sound.
                match panic::catch_unwind(AssertUnwindSafe(|| self.engine.step())) {
                    Ok(events) => {
                        // The gauges first, so a client that sees this step's tokens sees them too.
                        self.metrics.observe_step(&self.engine);
                        self.metrics.observe_engine(&self.engine);
                        for event in events {
                            self.handle(event);
                        }
                    }
                    Err(payload) => {
                        if !self.recover(payload) {
                            return;
                        }
                    }
                }
            }
            self.metrics.observe_engine(&self.engine);
        }
    }

    /// Fails every request in flight and replaces the engine; false if no new engine could be made.
    fn recover(&mut self, payload: Box<dyn std::any::Any + Send>) -> bool {
        let reason = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        for (_, a) in self.active.drain() {
            let _ = a.events.send(Event::Failed(ApiError::internal(format!(
                "the engine failed ({reason}); the request was dropped"
            ))));
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        match Engine::new(self.model, self.config) {
            Ok(engine) => {
                self.engine = engine;
                true
            }
            Err(e) => {
                eprintln!("the engine could not be restarted: {e}");
                false
            }
        }
    }

    fn accept(&mut self, job: Job) {
        let prompt_tokens = job.request.prompt_ids.len();
        match self.engine.add(job.request) {
            Ok(id) => {
                self.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
                let _ = job.events.send(Event::Started { prompt_tokens });
                self.active.insert(
                    id,
                    Active {
                        events: job.events,
                        stop: StopMatcher::new(job.stop),
                        completion_tokens: 0,
                        received: job.received,
                        last_token: None,
                    },
                );
            }
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.into()));
                self.done();
            }
        }
    }

    /// Cancels the sequences whose clients went away.
    fn drop_abandoned(&mut self) {
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.engine.cancel(id);
            self.active.remove(&id);
            self.metrics.cancelled.inc();
            self.done();
        }
    }

    fn done(&self) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
    }

    fn handle(&mut self, event: StepEvent) {
        match event {
            StepEvent::Token { id, text, .. } => {
                let Some(a) = self.active.get_mut(&id) else {
                    return;
                };
                a.completion_tokens += 1;
                self.metrics.generation_tokens.inc();
                let now = Instant::now();
                match a.last_token {
                    None => self
                        .metrics
                        .time_to_first_token
                        .observe((now - a.received).as_secs_f64()),
                    Some(last) => self
                        .metrics
                        .time_per_output_token
                        .observe((now - last).as_secs_f64()),
                }
                a.last_token = Some(now);
                let (out, hit) = a.stop.push(&text);
                let sent = out.is_empty() || a.events.send(Event::Text(out)).is_ok();
                if hit || !sent {
                    self.engine.cancel(id);
                    if let Some(a) = self.active.remove(&id) {
                        if sent {
                            self.finish(a, "stop");
                        } else {
                            self.metrics.cancelled.inc();
                            self.done();
                        }
                    }
                }
            }
            StepEvent::Finished {
                id, reason, text, ..
            } => {
                let Some(mut a) = self.active.remove(&id) else {
                    return;
                };
                let (out, hit) = a.stop.push(&text);
                let rest = if hit { String::new() } else { a.stop.finish() };
                for piece in [out, rest] {
                    if !piece.is_empty() {
                        let _ = a.events.send(Event::Text(piece));
                    }
                }
                let reason = match reason {
                    _ if hit => "stop",
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                };
                self.finish(a, reason);
            }
            StepEvent::Failed { id, error } => {
                if let Some(a) = self.active.remove(&id) {
                    let _ = a.events.send(Event::Failed(error.into()));
                    self.done();
                }
            }
        }
    }

    fn finish(&self, a: Active, finish_reason: &'static str) {
        self.metrics
            .request_latency
            .observe(a.received.elapsed().as_secs_f64());
        let _ = a.events.send(Event::Finished {
            finish_reason,
            completion_tokens: a.completion_tokens,
        });
        self.done();
    }
}

/// Returns the heap's free memory to the system. glibc keeps what a burst of requests freed in its arenas,
/// so without this the resident size stays at the burst's peak; the server calls it when it goes idle.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap structures under its locks; it takes a pad size and
    // has no other precondition.
    unsafe {
        libc::malloc_trim(0);
    }
}
