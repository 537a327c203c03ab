//! Inference workers: one thread per core, each running one single-threaded inference at a
//! time on successive frames. Jobs go out in frame order and come back in whatever order the
//! workers finish; the pipeline puts the decisions back in frame order.
//!
//! Measured on ResNet-50 (2-core x86, `crates/model/examples/infer_threads.rs`): two workers
//! make 1.8-1.9x the inferences per second of one thread, where tract's intra-op threads give
//! 1.4-1.6x (the matmuls split well, 1.7x, but the rest of each inference stays serial).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::infer::{Classified, Features, InferWorker};
use crate::stats::Span;

/// One frame's inference: its model input going out, its classification coming back. The
/// buffers travel with the job (boxed: it moves between threads and queues) and are reused
/// for later frames.
#[derive(Default)]
pub struct Job {
    /// Which frame (the pipeline's submission number).
    pub seq: u64,
    /// The model input (CHW, normalised).
    pub tensor: Vec<f32>,
    /// The grey N x N model input, kept for the frame's view and snapshots.
    pub grey: Vec<u8>,
    /// The model's `features` map, for the class-activation map.
    pub features: Features,
    /// The classification, once run.
    pub result: Option<Result<Classified, String>>,
    /// Wall and CPU time of the inference, on the thread that ran it.
    pub time: (Duration, Duration),
}

impl Job {
    /// Runs the model on this job's tensor, turning a panic inside the inference into an
    /// error: a worker never dies with a frame in hand.
    pub fn run(&mut self, worker: &InferWorker) {
        let span = Span::start();
        let (tensor, features) = (&self.tensor, &mut self.features);
        let r = catch_unwind(AssertUnwindSafe(|| worker.classify(tensor, features)));
        self.result = Some(match r {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(p) => Err(format!(
                "inference panicked: {}",
                p.downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)")
            )),
        });
        self.time = span.elapsed();
    }
}

/// Called by a worker when a job is done (wakes the runtime's frame wait).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// The worker threads and their queues.
pub struct Workers {
    jobs: Option<Sender<Box<Job>>>,
    done: Receiver<Box<Job>>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads sharing `worker`'s model, each with its own pool of
    /// `threads` intra-op threads (1: none); `notify` runs after each job.
    pub fn start(
        worker: &InferWorker,
        n: usize,
        threads: usize,
        notify: Option<Notify>,
    ) -> anyhow::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Box<Job>>();
        let rx = Arc::new(Mutex::new(rx));
        let (tx_done, done) = mpsc::channel::<Box<Job>>();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let pool = model::ThreadPool::new(threads)?;
            let (rx, tx, worker, notify) = (
                Arc::clone(&rx),
                tx_done.clone(),
                worker.clone(),
                notify.clone(),
            );
            let h = std::thread::Builder::new()
                .name(format!("infer-worker-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job.
                    let next = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => break,
                    };
                    let Ok(mut job) = next else { break };
                    pool.install(|| job.run(&worker));
                    if tx.send(job).is_err() {
                        break;
                    }
                    if let Some(n) = &notify {
                        n();
                    }
                })
                .map_err(|e| anyhow::anyhow!("cannot start inference worker {i}: {e}"))?;
            handles.push(h);
        }
        log::info!("{n} inference workers started, {threads} intra-op thread(s) each");
        Ok(Self {
            jobs: Some(jobs),
            done,
            handles,
        })
    }

    /// Worker threads started.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Hands a job to the next free worker; gives it back if every worker has gone.
    pub fn send(&self, job: Box<Job>) -> Result<(), Box<Job>> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// A finished job: waits up to `timeout` (`None`: returns at once). `Err` when every
    /// worker has gone.
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Option<Box<Job>>, WorkersGone> {
        match timeout {
            None => match self.done.try_recv() {
                Ok(j) => Ok(Some(j)),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::Disconnected) => Err(WorkersGone),
            },
            Some(t) => match self.done.recv_timeout(t) {
                Ok(j) => Ok(Some(j)),
                Err(RecvTimeoutError::Timeout) => Ok(None),
                Err(RecvTimeoutError::Disconnected) => Err(WorkersGone),
            },
        }
    }
}

/// Every inference worker has stopped (a bug: they turn panics into errors).
#[derive(Debug, Clone, Copy)]
pub struct WorkersGone;

impl Drop for Workers {
    fn drop(&mut self) {
        // Closing the job queue ends each worker after its current job.
        self.jobs = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
