//! Group commit: the event writes of concurrent requests share transactions.
//!
//! Each write (a request's pending event, its completion, a sync page's events) is a job:
//! operations on one partition of one day table. One worker takes every job waiting, packs
//! the jobs of each partition into as few transactions as Table Storage allows (100
//! operations, a body well under 4 MiB, each row once) and answers each job when its
//! transaction committed; up to four turns commit at once, so a slow partition holds up
//! only its own. A lone request still costs one transaction; eight at once cost
//! about one between them instead of eight. Nothing is acknowledged before it is stored,
//! so durability is the same as writing alone. A combined transaction that fails is tried
//! again job by job, so one bad event fails only its own request.

use std::collections::HashSet;
use std::sync::OnceLock;

use futures::future::join_all;
use tables::{Operation, Table};
use tokio::sync::{mpsc, oneshot};

/// Most operations in one transaction (Table Storage's limit).
const MAX_OPERATIONS: usize = 100;
/// Most bytes of entity JSON packed into one transaction (the limit is 4 MiB with the
/// multipart framing and escaping around it).
const MAX_BYTES: usize = 2 * 1024 * 1024;
/// Most jobs taken in one turn.
const MAX_JOBS: usize = 512;
/// Turns committing at once: a slow partition holds up only its own turn, and while all
/// are busy the next jobs queue up and share the next turn's transactions.
const TURNS_AT_ONCE: usize = 4;

/// Operations that must commit together, in one partition of one table.
pub struct Job {
    pub table: Table,
    pub partition: String,
    pub ops: Vec<Operation>,
}

type Reply = oneshot::Sender<Result<(), tables::Error>>;

/// The queue to the worker, started on first use (inside the runtime that uses it).
#[derive(Default)]
pub struct GroupCommit {
    jobs: OnceLock<mpsc::UnboundedSender<(Job, Reply)>>,
}

impl GroupCommit {
    /// Writes a job, with whatever other jobs are waiting; answers when it is stored.
    pub async fn write(&self, job: Job) -> Result<(), tables::Error> {
        let sender = self.jobs.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(run(receiver));
            sender
        });
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((job, _))) = sender.send((job, reply)) {
            // the worker is gone (its runtime shut down): write alone
            return write_alone(job).await;
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(tables::Error::Protocol(
                "the audit writer stopped before answering".into(),
            )),
        }
    }
}

/// Writes one job's operations in transactions of at most [`MAX_OPERATIONS`] and
/// [`MAX_BYTES`] each (a large job, such as a backlog of events with long changes, would
/// otherwise pass Table Storage's 4 MiB), in order.
async fn write_alone(job: Job) -> Result<(), tables::Error> {
    let mut chunk: Vec<Operation> = Vec::new();
    let mut size = 0;
    for op in job.ops {
        let op_bytes = bytes(&op);
        if !chunk.is_empty() && (chunk.len() == MAX_OPERATIONS || size + op_bytes > MAX_BYTES) {
            job.table.transact(&std::mem::take(&mut chunk)).await?;
            size = 0;
        }
        size += op_bytes;
        chunk.push(op);
    }
    if !chunk.is_empty() {
        job.table.transact(&chunk).await?;
    }
    Ok(())
}

fn row_key(op: &Operation) -> &str {
    match op {
        Operation::Insert(e)
        | Operation::Replace(e, _)
        | Operation::Merge(e, _)
        | Operation::UpsertReplace(e)
        | Operation::UpsertMerge(e) => &e.row_key,
        Operation::Delete { row_key, .. } => row_key,
    }
}

fn bytes(op: &Operation) -> usize {
    match op {
        Operation::Insert(e)
        | Operation::Replace(e, _)
        | Operation::Merge(e, _)
        | Operation::UpsertReplace(e)
        | Operation::UpsertMerge(e) => e.to_json().to_string().len(),
        Operation::Delete { row_key, .. } => row_key.len() + 64,
    }
}

/// Jobs that share one transaction.
struct Packed {
    table: Table,
    jobs: Vec<(Job, Reply)>,
    ops: usize,
    bytes: usize,
    rows: HashSet<String>,
}

impl Packed {
    fn fits(&self, job: &Job, size: usize) -> bool {
        self.table.name() == job.table.name()
            && self.jobs[0].0.partition == job.partition
            && self.ops + job.ops.len() <= MAX_OPERATIONS
            && self.bytes + size <= MAX_BYTES
            && job.ops.iter().all(|op| !self.rows.contains(row_key(op)))
    }

    fn add(&mut self, job: Job, reply: Reply, size: usize) {
        self.ops += job.ops.len();
        self.bytes += size;
        self.rows
            .extend(job.ops.iter().map(|op| row_key(op).to_string()));
        self.jobs.push((job, reply));
    }

    async fn commit(self) {
        if self.jobs.len() == 1 {
            let (job, reply) = self.jobs.into_iter().next().expect("one job");
            let _ = reply.send(write_alone(job).await);
            return;
        }
        let ops: Vec<Operation> = self
            .jobs
            .iter()
            .flat_map(|(job, _)| job.ops.iter().cloned())
            .collect();
        match self.table.transact(&ops).await {
            Ok(_) => {
                for (_, reply) in self.jobs {
                    let _ = reply.send(Ok(()));
                }
            }
            // one job may be what failed it: each alone, so the others still commit
            Err(_) => {
                join_all(self.jobs.into_iter().map(|(job, reply)| async move {
                    let _ = reply.send(write_alone(job).await);
                }))
                .await;
            }
        }
    }
}

async fn run(mut receiver: mpsc::UnboundedReceiver<(Job, Reply)>) {
    let turns = std::sync::Arc::new(tokio::sync::Semaphore::new(TURNS_AT_ONCE));
    while let Some(first) = receiver.recv().await {
        // wait for a free turn first: what queues up meanwhile joins this one
        let Ok(turn) = turns.clone().acquire_owned().await else {
            return;
        };
        let mut waiting = vec![first];
        while waiting.len() < MAX_JOBS {
            match receiver.try_recv() {
                Ok(job) => waiting.push(job),
                Err(_) => break,
            }
        }
        let mut packed: Vec<Packed> = Vec::new();
        for (job, reply) in waiting {
            let size: usize = job.ops.iter().map(bytes).sum();
            if job.ops.len() > MAX_OPERATIONS || size > MAX_BYTES {
                // too big to share: its own transactions, as it would alone
                packed.push(Packed {
                    table: job.table.clone(),
                    jobs: vec![(job, reply)],
                    ops: MAX_OPERATIONS,
                    bytes: MAX_BYTES,
                    rows: HashSet::new(),
                });
                continue;
            }
            match packed.iter_mut().find(|p| p.fits(&job, size)) {
                Some(p) => p.add(job, reply, size),
                None => {
                    let mut p = Packed {
                        table: job.table.clone(),
                        jobs: Vec::new(),
                        ops: 0,
                        bytes: 0,
                        rows: HashSet::new(),
                    };
                    p.add(job, reply, size);
                    packed.push(p);
                }
            }
        }
        // partitions commit side by side; the next turn takes what arrived meanwhile
        tokio::spawn(async move {
            join_all(packed.into_iter().map(Packed::commit)).await;
            drop(turn);
        });
    }
}
